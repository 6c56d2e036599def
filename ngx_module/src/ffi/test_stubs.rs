//! Unit tests run without nginx. The module's code is linked into the test executable, and the
//! few nginx symbols that stay reachable from tested code (through a trait object's table, say)
//! must exist for the executable to load; tests never call them. A test that reaches another
//! nginx symbol fails to start with "undefined symbol: NAME": add it here.

use nginx_sys::{ngx_http_request_t, ngx_int_t, ngx_rbtree_node_t, ngx_rbtree_t};

#[no_mangle]
extern "C" fn ngx_http_read_unbuffered_request_body(_r: *mut ngx_http_request_t) -> ngx_int_t {
    unreachable!("unit tests never read a request body from nginx")
}

#[no_mangle]
extern "C" fn ngx_rbtree_delete(_tree: *mut ngx_rbtree_t, _node: *mut ngx_rbtree_node_t) {
    unreachable!("unit tests arm no nginx timer")
}

#[no_mangle]
#[allow(non_upper_case_globals)]
static mut ngx_event_timer_rbtree: ngx_rbtree_t = ngx_rbtree_t {
    root: std::ptr::null_mut(),
    sentinel: std::ptr::null_mut(),
    insert: None,
};
