//! Keeps a gracefully exiting worker alive while requests are inside Python.
//!
//! A request waiting on a pool thread has no timer of its own, and an exiting nginx worker
//! (`nginx -s quit`, `nginx -s reload`) leaves as soon as no non-cancelable timer is left,
//! dropping such requests. While any request is in the pool, one timer stays armed, so every
//! request already inside Python finishes and gets its whole response. Event-loop thread only.

use std::ptr;

use nginx_sys::{ngx_add_timer, ngx_cycle, ngx_event_t};

use crate::ffi_guard::guard;

/// How often the timer looks whether requests are still outstanding.
const RECHECK_MS: usize = 500;

static mut OUTSTANDING: usize = 0;
static mut TIMER: *mut ngx_event_t = ptr::null_mut();

/// A request was handed to the thread pool.
///
/// # Safety
/// Event-loop thread only.
pub(crate) unsafe fn started() {
    // SAFETY: these statics are only touched on the single event-loop thread.
    unsafe {
        OUTSTANDING += 1;
        let ev = timer();
        if (*ev).timer_set() == 0 {
            ngx_add_timer(ev, RECHECK_MS as _);
        }
    }
}

/// A request came back from the thread pool.
///
/// # Safety
/// Event-loop thread only.
pub(crate) unsafe fn finished() {
    // SAFETY: as in `started`.
    unsafe { OUTSTANDING = OUTSTANDING.saturating_sub(1) };
}

unsafe fn timer() -> *mut ngx_event_t {
    // SAFETY: event-loop thread only; the event is allocated once and lives for the process.
    unsafe {
        if TIMER.is_null() {
            let ev: &mut ngx_event_t = Box::leak(Box::new(std::mem::zeroed()));
            ev.handler = Some(recheck);
            ev.log = (*ngx_cycle).log;
            TIMER = ev;
        }
        TIMER
    }
}

unsafe extern "C" fn recheck(ev: *mut ngx_event_t) {
    guard("the in-flight request timer", (), || {
        // SAFETY: called by nginx's timer code on the event loop with our event.
        unsafe {
            if OUTSTANDING > 0 {
                ngx_add_timer(ev, RECHECK_MS as _);
            }
        }
    })
}
