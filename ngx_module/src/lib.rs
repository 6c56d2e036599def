//! `ngx_http_wsgi_module`: nginx serves WSGI applications from a CPython interpreter embedded in
//! each worker process. This crate is the nginx glue; everything Python lives in `ngx_wsgi`.
//!
//! Request path: the content handler has nginx read the body, copies what the app needs into
//! task-owned memory on the event loop, and posts a task to an nginx thread pool; the pool thread
//! runs the app; the completion handler, back on the event loop, sends the response.

mod config;
mod dispatch;
mod ffi_guard;
mod handler;
mod inflight;
mod lifecycle;
mod log;
mod loop_cell;
mod metrics;
mod notify;
mod recycle;
mod request_body;
mod request_id;
mod request_info;
mod response;
mod stream;
mod timeout;

use std::ffi::{c_char, c_void};
use std::mem::offset_of;
use std::ptr;

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_module_t, ngx_module_t, ngx_str_t,
    NGX_CONF_1MORE, NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_MAIN_CONF, NGX_HTTP_MODULE,
    NGX_HTTP_SRV_CONF,
};

const MAIN_CONF_OFFSET: usize = offset_of!(ngx_http_conf_ctx_t, main_conf);
const LOC_CONF_OFFSET: usize = offset_of!(ngx_http_conf_ctx_t, loc_conf);

type DirectiveSetter =
    unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// A directive whose setter writes at `offset` into the `conf`-selected configuration.
const fn directive(
    name: ngx_str_t,
    kind: u32,
    set: DirectiveSetter,
    conf: usize,
    offset: usize,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: kind as _,
        set: Some(set),
        conf,
        offset,
        post: ptr::null_mut(),
    }
}

static mut NGX_HTTP_WSGI_COMMANDS: [ngx_command_t; 13] = [
    directive(
        ngx::ngx_string!("wsgi_app"),
        NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        config::set_app,
        LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_python_home"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        config::set_python_home,
        MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_python_path"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
        config::set_python_path,
        MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_thread_pool"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        config::set_thread_pool,
        LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_stream_buffer"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        nginx_sys::ngx_conf_set_size_slot,
        LOC_CONF_OFFSET,
        offset_of!(config::LocConf, stream_buffer),
    ),
    directive(
        ngx::ngx_string!("wsgi_request_buffering"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | nginx_sys::NGX_CONF_FLAG,
        nginx_sys::ngx_conf_set_flag_slot,
        LOC_CONF_OFFSET,
        offset_of!(config::LocConf, request_buffering),
    ),
    directive(
        ngx::ngx_string!("wsgi_param"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | nginx_sys::NGX_CONF_TAKE23,
        config::set_param,
        LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_max_requests"),
        NGX_HTTP_MAIN_CONF | nginx_sys::NGX_CONF_TAKE12,
        config::set_max_requests,
        MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_max_rss"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        nginx_sys::ngx_conf_set_size_slot,
        MAIN_CONF_OFFSET,
        offset_of!(config::MainConf, max_rss),
    ),
    directive(
        ngx::ngx_string!("wsgi_read_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        nginx_sys::ngx_conf_set_msec_slot,
        LOC_CONF_OFFSET,
        offset_of!(config::LocConf, read_timeout),
    ),
    directive(
        ngx::ngx_string!("wsgi_ignore_headers"),
        NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
        config::set_ignore_headers,
        LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_status"),
        NGX_HTTP_LOC_CONF | nginx_sys::NGX_CONF_NOARGS,
        metrics::set_status,
        LOC_CONF_OFFSET,
        0,
    ),
    ngx_command_t::empty(),
];

static NGX_HTTP_WSGI_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(config::postconfiguration),
    create_main_conf: Some(config::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(config::create_loc_conf),
    merge_loc_conf: Some(config::merge_loc_conf),
};

ngx::ngx_modules!(ngx_http_wsgi_module);

#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_http_wsgi_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(NGX_HTTP_WSGI_MODULE_CTX) as *mut c_void,
    // nginx only reads the command table, which lives for the whole program.
    commands: ptr::addr_of_mut!(NGX_HTTP_WSGI_COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as _,
    init_process: Some(lifecycle::init_process),
    exit_process: Some(lifecycle::exit_process),
    ..ngx_module_t::default()
};

/// This module's descriptor, for configuration look-ups.
pub(crate) fn module() -> &'static ngx_module_t {
    // SAFETY: nginx writes the module's indexes before any configuration callback runs and never
    // afterwards; everything here only reads them.
    unsafe { &*ptr::addr_of!(ngx_http_wsgi_module) }
}

/// An nginx string as bytes (empty for a NULL string).
pub(crate) fn ngx_bytes(s: &ngx_str_t) -> &[u8] {
    if s.data.is_null() || s.len == 0 {
        &[]
    } else {
        // SAFETY: a non-NULL ngx_str_t describes `len` readable bytes.
        unsafe { std::slice::from_raw_parts(s.data, s.len) }
    }
}
