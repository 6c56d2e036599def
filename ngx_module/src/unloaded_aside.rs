//! A reload's new worker that could not load its apps (an import that failed: a lock the old
//! workers still hold, as ZODB's, a file being deployed), while the old workers, which serve
//! those apps, go on accepting under `wsgi_reload_handover`: it leaves new connections to them
//! instead of answering 500 for its share, until they stop accepting (or its own bound passes),
//! and it replaces itself meanwhile as any such worker does (`recycle.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nginx_sys::{ngx_event_t, ngx_msec_t, NGX_LOG_NOTICE};

use crate::ffi::guard;
use crate::ffi::timer::WorkerTimer;
use crate::shared_sockets::Why;

static CHECK: WorkerTimer = WorkerTimer::new();
/// nginx's clock when the worker stood aside.
static SINCE: AtomicU64 = AtomicU64::new(0);
/// How long it stands aside at most, in ms: as long as the old workers wait for it.
static BOUND_MS: AtomicU64 = AtomicU64::new(0);
const CHECK_MS: ngx_msec_t = 50;

/// The worker could not load its apps (from `init_process`): it stands aside while a reload's
/// old workers serve them; `bound` is how long they wait for it at most.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn begin(bound: Duration) {
    if !crate::reload_handover::awaited_by_old_workers()
        || !crate::reload_handover::old_workers_accept()
    {
        return;
    }
    // SAFETY: per the function contract.
    if !unsafe { crate::shared_sockets::leave(Why::Unloaded) } {
        return;
    }
    // SAFETY: plain read of nginx's cached clock on the event loop.
    SINCE.store(
        unsafe { nginx_sys::ngx_current_msec } as u64,
        Ordering::Release,
    );
    BOUND_MS.store(bound.as_millis() as u64, Ordering::Release);
    crate::ffi::log::cycle_log(
        NGX_LOG_NOTICE as usize,
        "wsgi: this new worker could not load its apps: it leaves new connections to the \
         reload's old workers, which serve them, while they accept",
    );
    // SAFETY: on the event loop; the timer is a static.
    unsafe {
        crate::ffi::timer::keep_armed(CHECK.event(), Some(check), std::ptr::null_mut(), CHECK_MS)
    };
}

/// Takes new connections again once the old workers stop accepting, or at the bound.
unsafe extern "C" fn check(ev: *mut ngx_event_t) {
    guard("a new worker that could not load its apps", (), || {
        // SAFETY: plain reads of nginx's clock and flags on the event loop.
        let (now, stopping) = unsafe {
            (
                nginx_sys::ngx_current_msec as u64,
                nginx_sys::ngx_terminate != 0
                    || nginx_sys::ngx_quit != 0
                    || nginx_sys::ngx_exiting != 0,
            )
        };
        let waited = now.saturating_sub(SINCE.load(Ordering::Acquire));
        if crate::reload_handover::old_workers_accept()
            && waited < BOUND_MS.load(Ordering::Acquire)
            && !stopping
        {
            // SAFETY: the event is the static check timer, on the event loop.
            unsafe { nginx_sys::ngx_add_timer(ev, CHECK_MS) };
            return;
        }
        // SAFETY: on the event loop.
        unsafe { crate::shared_sockets::put_back(Why::Unloaded) };
        if !stopping {
            crate::ffi::log::cycle_log(
                NGX_LOG_NOTICE as usize,
                &format!(
                    "wsgi: the reload's old workers stopped accepting (after {waited} ms): this \
                     worker takes new connections again, answering 500 for the apps it could not \
                     load until a fresh worker loads them"
                ),
            );
        }
    })
}
