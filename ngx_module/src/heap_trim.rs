//! A worker's C heap after a burst: once a second the worker looks whether it is quiet (no
//! request handed to an app or finished during the last second, some since the last look that
//! trimmed), and then has the heap's free pages given back to the system, off the event loop
//! (core `heap`).
//! Without it a worker stays at the size of its busiest moment: `wsgi_max_rss` would recycle
//! it for memory it no longer uses, and a host's memory is planned for the peak of every worker.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use nginx_sys::{ngx_event_t, ngx_exiting, ngx_msec_t, ngx_quit, ngx_terminate};
use ngx_wsgi::heap::{self, Quiet};

use crate::ffi::guard;
use crate::ffi::loop_cell::LoopCell;
use crate::ffi::timer::WorkerTimer;

const EVERY_MS: ngx_msec_t = 1000;

/// Requests handed to their apps and requests finished (WSGI and ASGI, WebSockets included):
/// a burst of slow requests frees its memory as they end, not as they start.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);
static QUIET: LoopCell<Quiet> = LoopCell::new(Quiet::new());
static TIMER: WorkerTimer = WorkerTimer::new();

/// A request was handed to its app, or finished.
pub(crate) fn activity() {
    ACTIVITY.fetch_add(1, Relaxed);
}

/// Starts the once-a-second look (and arms its next turn).
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn start() {
    // SAFETY: per the function contract; cancelable, the timer does not hold an exiting worker.
    unsafe {
        crate::ffi::timer::keep_armed(TIMER.event(), Some(look), std::ptr::null_mut(), EVERY_MS)
    };
}

unsafe extern "C" fn look(_ev: *mut ngx_event_t) {
    guard("the heap's trim", (), || {
        // SAFETY: nginx's own flags, read on the event loop.
        if unsafe { ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 } {
            // The process is about to go, and its memory with it.
            return;
        }
        // SAFETY: event-loop thread, the only one that touches the cell.
        let mut quiet = unsafe { QUIET.get() };
        let trim = quiet.tick(ACTIVITY.load(Relaxed));
        // SAFETY: as above.
        unsafe { QUIET.set(quiet) };
        if trim {
            heap::give_back_in_background();
        }
        // SAFETY: the timer's handler runs on the event loop.
        unsafe { start() };
    })
}
