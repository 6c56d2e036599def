//! Worker recycling (`wsgi_max_requests N [jitter=M]`, `wsgi_max_rss SIZE`): a worker that has
//! served enough requests, or grown too large, first drains its keep-alive connections (each
//! next response says `Connection: close`; meanwhile the other workers, if any accept, take its
//! new connections), then stops accepting, finishes what it has in flight and exits; nginx's
//! master starts a fresh one in its place. One that comes due while no other worker of its
//! configuration accepts (each of them recycling, its successor still importing the apps), where
//! there are others, serves on until one does, [`SIBLING_WAIT_MS`] at most: workers that served
//! about as many requests come due together, and the second left none serving for the whole of
//! the first one's successor's start (pretix, 2 workers: 7 s without an answer). Event-loop
//! thread only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use ngx::core::{CoreModuleMainConf, NgxCoreModule};
use ngx_wsgi::recycle::{Due, Limits};

use nginx_sys::{
    ngx_event_t, ngx_exiting, ngx_http_request_t, ngx_msec_t, ngx_quit, NGX_LOG_ALERT, NGX_LOG_ERR,
    NGX_LOG_NOTICE,
};

use crate::ffi::guard;
use crate::ffi::loop_cell::LoopCell;
use crate::ffi::timer::WorkerTimer;

static LIMITS: Limits = Limits::new();
/// Requests handed to their apps.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// How long a worker that could not load an app (or start Python) serves without it before it
/// replaces itself to try again: each try is Python's start and every import, once per worker.
pub(crate) const RETRY_LOAD_MS: ngx_msec_t = 10_000;
static RETRY_TIMER: WorkerTimer = WorkerTimer::new();

/// How long a due worker serves on while no other worker accepts: about an import under load.
const SIBLING_WAIT_MS: u64 = 30_000;
/// How often it looks at the others meanwhile.
const SIBLING_LOOK_MS: ngx_msec_t = 100;
static SIBLING_TIMER: WorkerTimer = WorkerTimer::new();
/// Why the worker is due, and since when (the monotonic clock, in ms), while it waits.
static DUE_WAITING: LoopCell<Option<(Due, u64)>> = LoopCell::new(None);

/// Sets the limits for this worker (from `init_process`).
pub(crate) fn configure(max_requests: u64, jitter: u64, max_rss: usize) {
    LIMITS.configure(max_requests, jitter, max_rss);
}

/// A request was handed to its app. The one that brings the worker to `wsgi_max_requests`, and
/// any after it, answers with `Connection: close`: the worker exits once they are served, and
/// a client that kept the connection would send its next request into a closing socket. (A
/// head sent once `wsgi_max_rss` made the worker recycle says so too: `response::send_head`.)
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn request_started(r: *mut ngx_http_request_t) {
    crate::heap_trim::activity();
    let limit = LIMITS.request_limit();
    if limit > 0 && STARTED.fetch_add(1, Relaxed) + 1 >= limit {
        // SAFETY: per the function contract.
        unsafe { (*(*r).main).set_keepalive(0) };
    }
}

/// A request finished; starts a graceful exit of the worker when it is due.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn request_done() {
    crate::heap_trim::activity();
    let Some(due) = LIMITS.request_done() else {
        return;
    };
    // SAFETY: per the function contract: nginx's own settings and the loop's own cell.
    unsafe {
        if others_configured() && !crate::sibling_workers::others_accept() {
            DUE_WAITING.set(Some((due, ngx_wsgi::monotonic::ms())));
            crate::ffi::log::cycle_log(
                NGX_LOG_NOTICE as usize,
                &format!(
                    "wsgi: this worker {}, but no other worker accepts now (they are starting): \
                     it serves on until one does, {} s at most, then recycles",
                    due_why(due),
                    SIBLING_WAIT_MS / 1000
                ),
            );
            crate::ffi::timer::keep_armed(
                SIBLING_TIMER.event(),
                Some(look_at_siblings),
                std::ptr::null_mut(),
                SIBLING_LOOK_MS,
            );
            return;
        }
    }
    recycle(&due_why(due), true);
}

fn due_why(due: Due) -> String {
    match due {
        Due::Requests(served) => format!("served {served} requests (wsgi_max_requests)"),
        Due::Memory(rss, max) => {
            format!("uses {} MiB (wsgi_max_rss {} MiB)", rss >> 20, max >> 20)
        }
    }
}

/// Whether nginx runs more workers of this configuration than this one.
///
/// # Safety
/// Event-loop thread.
unsafe fn others_configured() -> bool {
    // SAFETY: per the function contract: nginx's own settings.
    unsafe {
        nginx_sys::ngx_process as u32 == nginx_sys::NGX_PROCESS_WORKER
            && NgxCoreModule::main_conf(&*nginx_sys::ngx_cycle)
                .is_some_and(|ccf| ccf.worker_processes > 1)
    }
}

/// The due worker's look while it waits for another to accept.
unsafe extern "C" fn look_at_siblings(ev: *mut ngx_event_t) {
    guard("a due worker's wait for the others", (), || {
        // SAFETY: timers run on the event loop.
        let Some((due, since)) = (unsafe { DUE_WAITING.get() }) else {
            return;
        };
        // SAFETY: nginx's own flags, read on the event loop.
        if unsafe { ngx_exiting != 0 || ngx_quit != 0 || nginx_sys::ngx_terminate != 0 } {
            // Leaving anyway (a reload, a quit): its exit is nginx's.
            return;
        }
        let waited = ngx_wsgi::monotonic::ms().saturating_sub(since);
        if !crate::sibling_workers::others_accept() && waited < SIBLING_WAIT_MS {
            // SAFETY: the event is the static timer, on the event loop.
            unsafe { nginx_sys::ngx_add_timer(ev, SIBLING_LOOK_MS) };
            return;
        }
        // SAFETY: on the event loop.
        unsafe { DUE_WAITING.set(None) };
        let after = if waited < SIBLING_WAIT_MS {
            "another worker accepts"
        } else {
            "no other worker accepted"
        };
        recycle(
            &format!("{} ({after} after {waited} ms)", due_why(due)),
            true,
        );
    })
}

/// The worker's ASGI event loop died (its requests were answered): a fresh worker takes over.
/// Event-loop thread.
pub(crate) fn loop_died() {
    // No drain: the worker cannot serve its ASGI apps any more.
    recycle("lost its ASGI event loop", false);
}

/// The worker's ASGI event loop is stuck in an app's call (`asgi_queue::loop_stuck`): a fresh
/// worker takes over. The drain serves WSGI requests' keep-alive clients as for any recycling;
/// the ASGI requests the loop holds cannot end, and do not hold the worker's exit.
/// Event-loop thread.
pub(crate) fn loop_stuck(for_how_long: std::time::Duration) {
    // SAFETY: nginx's own flag, read on the event loop (`ngx_quit` is reset once the exit began).
    if crate::exit_drain::ending() || unsafe { ngx_exiting != 0 } {
        return;
    }
    crate::ffi::log::cycle_log(
        NGX_LOG_ALERT as usize,
        &format!(
            "wsgi: the ASGI event loop has taken none of the work handed to it for {} ms: an app \
             keeps its thread in a call that does not return (the stack logged with the first \
             request it refused says where); its requests are cut at the worker's exit",
            for_how_long.as_millis()
        ),
    );
    recycle("has a stuck ASGI event loop", true);
}

/// A pool of this worker has been stuck for `stuck_for` ms (`stuck_pool`; `threads`: how many
/// it may have, when known): a fresh worker takes over. Event-loop thread.
pub(crate) fn pool_stuck(stuck_for: ngx_msec_t, threads: Option<usize>) {
    // SAFETY: nginx's own flag, read on the event loop (`ngx_quit` is reset once the exit began).
    if crate::exit_drain::ending() || unsafe { ngx_exiting != 0 } {
        return;
    }
    let held = match threads {
        Some(n) => format!("its {n} Python threads (wsgi_max_threads) are all held"),
        None => "its thread pool's threads are held".to_owned(),
    };
    crate::ffi::log::cycle_log(
        NGX_LOG_ALERT as usize,
        &format!(
            "wsgi: this worker has run none of its queued WSGI requests for {stuck_for} ms: \
             {held} by requests past wsgi_read_timeout in calls that do not return, or one of \
             those calls keeps the GIL (their stacks were logged at their timeouts); those \
             requests are cut at the worker's exit"
        ),
    );
    crate::inflight::let_go_of_lost();
    recycle("has every Python thread stuck", true);
}

/// The worker could not load an app at its start: a fresh worker tries again in
/// [`RETRY_LOAD_MS`].
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn retry_load_later() {
    // SAFETY: per the function contract; the event is a static.
    unsafe {
        crate::ffi::timer::keep_armed(
            RETRY_TIMER.event(),
            Some(retry_load),
            std::ptr::null_mut(),
            RETRY_LOAD_MS,
        )
    };
}

/// A request reached an app this worker could not load (or whose Python or event loop could not
/// start): it gets a 500. Logged once per worker, not per request: under load a line per request
/// would flood the error log for the seconds until the fresh worker, and the alert at the
/// worker's start already says why.
pub(crate) fn unloaded_app_asked(kind: &str) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if LOGGED.swap(true, Relaxed) {
        return;
    }
    crate::ffi::log::cycle_log(
        NGX_LOG_ERR as usize,
        &format!(
            "{kind}: the app of this location is not running in this worker (see the alert at its \
             start): it answers 500, logged once per worker, until a fresh worker replaces it"
        ),
    );
}

/// The worker could not load an app at its start, and what may have kept it from loading (a
/// reload's old workers) is gone: a fresh worker tries again now, not at [`RETRY_LOAD_MS`].
pub(crate) fn retry_load_now() {
    recycle(
        "could not load an app at its start, and the reload's old workers have exited",
        true,
    );
}

unsafe extern "C" fn retry_load(ev: *mut ngx_event_t) {
    guard("replacing a worker that could not load an app", (), || {
        // The reload's old workers serve the apps while its other new workers import them, and
        // may hold what this one failed on: a fresh worker would fail again on it, logging the
        // same traceback. It tries again once they have exited (`unloaded_aside.rs`).
        if crate::reload_handover::awaited_by_old_workers()
            && crate::reload_handover::old_workers_accept()
        {
            // SAFETY: the event is the static retry timer, on the event loop.
            unsafe { nginx_sys::ngx_add_timer(ev, RETRY_LOAD_MS) };
            return;
        }
        recycle("could not load an app at its start", true);
    })
}

/// Has the event loop recycle the worker (the ASGI event loop's thread calls it as it dies).
pub(crate) fn after_loop_death() {
    struct Recycle;
    impl crate::notify::Pump for Recycle {
        unsafe fn pump(&self) {
            loop_died();
        }
    }
    crate::notify::schedule_lasting(&Recycle);
}

fn recycle(why: &str, drain: bool) {
    // SAFETY: nginx's own flags, read on the event loop.
    if unsafe { ngx_exiting != 0 || ngx_quit != 0 } {
        return;
    }
    if crate::exit_drain::ending() {
        if !drain {
            crate::exit_drain::quit();
        }
        return;
    }
    crate::ffi::log::cycle_log(
        NGX_LOG_NOTICE as usize,
        &format!("wsgi: this worker {why}; recycling it"),
    );
    crate::metrics::recycled();
    crate::inflight::exit_is_the_workers_own();
    crate::sibling_workers::withdraw();
    let others_accept = crate::sibling_workers::others_accept();
    if drain {
        use crate::exit_drain::Accepting;
        let accepting = if others_accept {
            Accepting::LeaveToOthers
        } else {
            Accepting::GoOn
        };
        // SAFETY: on the event loop (every caller's contract).
        unsafe { crate::exit_drain::begin(accepting) };
    } else {
        crate::exit_drain::quit();
    }
}
