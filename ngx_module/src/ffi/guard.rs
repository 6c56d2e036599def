//! Every function nginx calls runs inside `guard`: a Rust panic is logged and turned into the
//! caller's error value instead of unwinding into C.

pub(crate) fn guard<R>(what: &str, on_panic: R, f: impl FnOnce() -> R) -> R {
    let alert = |line: &str| super::log::cycle_log(nginx_sys::NGX_LOG_ALERT as usize, line);
    ngx_wsgi::server_log::catch_panic(what, on_panic, alert, f)
}
