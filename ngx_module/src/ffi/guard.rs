//! Every function nginx calls runs inside `guard`: a Rust panic is logged and turned into the
//! caller's error value instead of unwinding into C.

use std::panic::{catch_unwind, AssertUnwindSafe};

pub(crate) fn guard<R>(what: &str, on_panic: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = ngx_wsgi::server_log::panic_message(&*payload);
            super::log::cycle_log(
                nginx_sys::NGX_LOG_ALERT as usize,
                &format!("wsgi: internal error in {what}: {msg}"),
            );
            on_panic
        }
    }
}
