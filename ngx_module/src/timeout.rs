//! `wsgi_read_timeout`: a request still inside Python at its deadline gets a 504 at once; its
//! Python stack goes to the error log and its thread is interrupted with `TimeoutError` (from a
//! helper thread: the event loop never waits for the GIL). Other requests are unaffected.

use nginx_sys::{ngx_add_timer, ngx_del_timer, ngx_event_t, ngx_msec_t};

use crate::ffi_guard::guard;
use crate::handler::Job;

/// Starts the request's deadline.
///
/// # Safety
/// Event-loop thread; `job` is boxed (its address is stable) and lives until the request's pool
/// is destroyed, after `disarm`.
pub(crate) unsafe fn arm(job: *mut Job, timeout: ngx_msec_t) {
    if timeout == 0 {
        return;
    }
    // SAFETY: per the function contract; the event is part of the job.
    unsafe {
        let ev = &mut (*job).deadline;
        ev.handler = Some(expired);
        ev.data = job.cast();
        ev.log = (*(*(*job).request).connection).log;
        ngx_add_timer(ev, timeout);
    }
}

/// The request came back from Python: no deadline any more.
///
/// # Safety
/// Event-loop thread; `job` is live.
pub(crate) unsafe fn disarm(job: *mut Job) {
    // SAFETY: per the function contract.
    unsafe {
        if (*job).deadline.timer_set() != 0 {
            ngx_del_timer(&mut (*job).deadline);
        }
    }
}

unsafe extern "C" fn expired(ev: *mut ngx_event_t) {
    guard("the wsgi read timeout", (), || {
        // SAFETY: the event's data is its job; the request is live while the task is
        // outstanding, which is the only time this timer is set.
        unsafe {
            let job = (*ev).data as *mut Job;
            let r = (*job).request;
            let what = format!(
                "wsgi_read_timeout: \"{}\" is still inside Python after {} ms",
                (*job).info.request_line().escape_debug(),
                (*job).read_timeout
            );
            (*job).watch.interrupt_in_background(what);
            crate::metrics::timed_out();
            (*job).timed_out = Some((*job).stream.time_out(r));
            if let Some(body) = &(*job).body_stream {
                body.fail("wsgi_read_timeout: the request timed out");
            }
        }
    })
}
