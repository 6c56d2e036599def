//! Whether a request's client went away, asked when its connection becomes readable while the
//! module owns the request (nothing else reads it then): nginx's own test (a FIN, an RST, a
//! reset HTTP/2 stream), after which the request reads nothing more. Under a level-triggered
//! event method (`use poll;`, `select`) the closed socket would otherwise make the loop call
//! the handler again at every turn.

use nginx_sys::{
    ngx_event_flags, ngx_http_block_reading, ngx_http_request_t, ngx_http_test_reading,
    NGX_USE_LEVEL_EVENT,
};

/// True once the client is gone (its request is marked so by nginx).
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn client_left(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: per the function contract.
    unsafe {
        // Known already (asked again by a posted event): nginx's test would log it twice.
        if (*(*r).connection).error() == 0 {
            ngx_http_test_reading(r);
        }
        if (*(*r).connection).error() == 0 {
            return false;
        }
        (*r).read_event_handler = Some(ngx_http_block_reading);
        ngx_http_block_reading(r);
        true
    }
}

/// True once the client is gone, asked as its request is handed over: a close that came in the
/// same read as the request left no event behind under an edge-triggered method (epoll,
/// kqueue). A level-triggered one (`poll`, `select`) reports it again, and there nginx's test
/// would stop watching a client that stayed: only a failure already known counts.
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn left_with_its_request(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: per the function contract; nginx's flags are fixed once the worker runs.
    unsafe {
        if ngx_event_flags & NGX_USE_LEVEL_EVENT as usize != 0 && (*(*r).connection).error() == 0 {
            return false;
        }
        client_left(r)
    }
}
