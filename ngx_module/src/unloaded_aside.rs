//! A reload's new worker that could not load its apps (an import that failed: a lock the old
//! workers still hold, as ZODB's, a file being deployed). While the old workers, which serve
//! those apps, go on accepting under `wsgi_reload_handover` (until none of its generation still
//! imports: a failed start ends the wait), it leaves new connections to them instead of
//! answering 500 for its share. Once they stop, while they still run (their drain, their last
//! requests) it leaves new connections waiting, up to [`WAIT_FOR_EXIT_MS`] after the reload or
//! their last accept (its replacements included), and as soon as they have exited, letting go
//! of what they held (`old_workers.rs`), it replaces itself so that a fresh worker loads the
//! apps (`recycle.rs`; its 10 s retry waits while they accept, and goes on once they stop).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nginx_sys::{ngx_event_t, ngx_msec_t, NGX_LOG_NOTICE};

use crate::ffi::guard;
use crate::ffi::timer::WorkerTimer;
use crate::shared_sockets::Why;

static CHECK: WorkerTimer = WorkerTimer::new();
/// nginx's clock when the worker stood aside.
static SINCE: AtomicU64 = AtomicU64::new(0);
/// How long it stands aside at most while the old workers accept, in ms: as long as they wait
/// for it.
static BOUND_MS: AtomicU64 = AtomicU64::new(0);
const CHECK_MS: ngx_msec_t = 50;

/// How long new connections wait for old workers that no longer accept but still run. An old
/// worker told to quit serves its keep-alive connections' next requests for up to 2 s, then
/// ends its last requests: this covers those of up to about 6 s (a Zope request), and ends
/// before the worker's own retry. Every location of the worker waits meanwhile, for an app
/// that may not load anyway: not longer.
const WAIT_FOR_EXIT_MS: u64 = 8_000;

/// Until when (the monotonic clock, in ms) a worker of this configuration leaves new
/// connections waiting for old workers that no longer accept but still run: the same for each
/// worker that replaces another, so that an old worker's long last request does not hold them
/// for its whole length.
fn wait_for_exit_until() -> u64 {
    crate::old_workers::reload_at_ms().max(crate::reload_handover::old_workers_accepted_until())
        + WAIT_FOR_EXIT_MS
}

/// How long ago the master took this worker's configuration, in ms.
fn since_reload_ms() -> u64 {
    ngx_wsgi::monotonic::ms().saturating_sub(crate::old_workers::reload_at_ms())
}

/// The worker could not load its apps (from `init_process`): it stands aside while a reload's
/// old workers serve them, or run; `bound` is how long they wait for it at most.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn begin(bound: Duration) {
    let accepting = crate::reload_handover::awaited_by_old_workers()
        && crate::reload_handover::old_workers_accept();
    if !accepting && !crate::old_workers::running() {
        return;
    }
    let aside = (accepting || ngx_wsgi::monotonic::ms() < wait_for_exit_until())
        // SAFETY: per the function contract. A worker with none to leave (its own `reuseport`
        // socket, nginx's accept mutex) answers 500 for the apps meanwhile.
        && unsafe { crate::shared_sockets::leave(Why::Unloaded) };
    // SAFETY: plain read of nginx's cached clock on the event loop.
    SINCE.store(
        unsafe { nginx_sys::ngx_current_msec } as u64,
        Ordering::Release,
    );
    BOUND_MS.store(bound.as_millis() as u64, Ordering::Release);
    let what = match (aside, accepting) {
        (true, true) => {
            "it leaves new connections to the reload's old workers, which serve them, while \
             they accept"
        }
        (true, false) => {
            "it leaves the new connections of the listening sockets it shares waiting (or to the \
             other workers) while the reload's old workers exit"
        }
        (false, _) => "it answers 500 for them while the reload's old workers run",
    };
    crate::ffi::log::cycle_log(
        NGX_LOG_NOTICE as usize,
        &format!(
            "wsgi: this new worker could not load its apps: {what}, and replaces itself to load \
             them again as soon as those have exited (they may hold what the import needs)"
        ),
    );
    // SAFETY: on the event loop; the timer is a static.
    unsafe {
        crate::ffi::timer::keep_armed(CHECK.event(), Some(check), std::ptr::null_mut(), CHECK_MS)
    };
}

/// Waits while the old workers accept (up to the bound), then while they run (taking new
/// connections again past [`wait_for_exit_until`]); replaces the worker once they have exited.
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
        if stopping {
            // SAFETY: on the event loop (sockets nginx's exit closed are not put back).
            unsafe { crate::shared_sockets::put_back(Why::Unloaded) };
            return;
        }
        if crate::exit_drain::ending() {
            // Replaced already (its 10 s retry): the sockets stay out through the exit.
            return;
        }
        let waited = now.saturating_sub(SINCE.load(Ordering::Acquire));
        let accepting = crate::reload_handover::old_workers_accept()
            && waited < BOUND_MS.load(Ordering::Acquire);
        if accepting || crate::old_workers::running() {
            if !accepting && ngx_wsgi::monotonic::ms() >= wait_for_exit_until() {
                take_connections_again();
            }
            // SAFETY: the event is the static check timer, on the event loop.
            unsafe { nginx_sys::ngx_add_timer(ev, CHECK_MS) };
            return;
        }
        crate::ffi::log::cycle_log(
            NGX_LOG_NOTICE as usize,
            &format!(
                "wsgi: the reload's old workers have exited ({} ms after the reload): this \
                 worker, which could not load its apps, replaces itself now so that a fresh one \
                 loads them",
                since_reload_ms()
            ),
        );
        // The sockets stay out through the exit: new connections wait for the fresh worker (or
        // go to the other workers).
        crate::recycle::retry_load_now();
    })
}

/// The old workers outlived the wait: the worker serves what it can, answering 500 for the apps
/// it could not load until it is replaced (at its retry, or once they have exited).
fn take_connections_again() {
    if crate::shared_sockets::left() != Some(Why::Unloaded) {
        return;
    }
    // SAFETY: on the event loop (the check timer's handler).
    unsafe { crate::shared_sockets::put_back(Why::Unloaded) };
    crate::ffi::log::cycle_log(
        NGX_LOG_NOTICE as usize,
        &format!(
            "wsgi: the reload's old workers no longer accept but still run ({} ms after the \
             reload): this worker takes new connections again, answering 500 for the apps it \
             could not load until a fresh worker loads them",
            since_reload_ms()
        ),
    );
}
