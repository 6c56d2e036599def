//! A request that nginx answered in its app's place while the app's thread still has it (a 504
//! at `wsgi_read_timeout`, a client gone mid-request): its access-log entry is written now, when
//! nginx writes a proxied request's, with its status and time then, not when the thread comes
//! back (which a call stuck in C code may never do). nginx's own log phase then skips it.

use nginx_sys::{
    ngx_http_handler_pt, ngx_http_phases_NGX_HTTP_LOG_PHASE, ngx_http_request_t, ngx_int_t,
};
use ngx::http::{HttpModuleMainConf, NgxHttpCoreModule};

/// Runs the log phase for main request `r` now (once): `status` is what it ends as where no
/// response went out (nginx's own rule at the request's end).
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn write_now(r: *mut ngx_http_request_t, status: Option<ngx_int_t>) {
    // SAFETY: per the function contract.
    let req = unsafe { &mut *r };
    if r != req.main || req.logged() != 0 {
        return;
    }
    if let Some(status) = status.filter(|&s| s > 0) {
        // SAFETY: a live request has a live connection.
        let sent = unsafe { (*req.connection).sent };
        if req.headers_out.status == 0 || sent == 0 {
            req.headers_out.status = status as usize;
        }
    }
    // SAFETY: every request has the core module's main configuration.
    let Some(cmcf) = (unsafe { NgxHttpCoreModule::main_conf(&*r) }) else {
        return;
    };
    let handlers = &cmcf.phases[ngx_http_phases_NGX_HTTP_LOG_PHASE as usize].handlers;
    // SAFETY: the log phase's array holds handler pointers, built at configuration and never
    // changed after it.
    let handlers = unsafe {
        std::slice::from_raw_parts(handlers.elts as *const ngx_http_handler_pt, handlers.nelts)
    };
    for handler in handlers.iter().flatten() {
        // SAFETY: nginx's log handlers take a live request, as at its own log phase.
        unsafe { handler(r) };
    }
    req.set_logged(1);
}
