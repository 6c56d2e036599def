//! Keeps a gracefully exiting worker alive while requests are inside Python, for a bounded time.
//!
//! A request waiting on a pool thread has no timer of its own, and an exiting nginx worker
//! (`nginx -s quit`, `nginx -s reload`) leaves as soon as no non-cancelable timer is left,
//! dropping such requests. While any request is in the pool, one timer stays armed, so every
//! request already inside Python finishes and gets its whole response. A request that never
//! returns must not keep the old worker forever: after `worker_shutdown_timeout` (or
//! [`EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS`] when that is not set) the worker exits at once. Event-loop
//! thread only.

use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use nginx_sys::{
    ngx_add_timer, ngx_connection_t, ngx_current_msec, ngx_cycle, ngx_event_t, ngx_exiting,
    ngx_http_request_t, ngx_msec_t, NGX_LOG_ALERT, NGX_LOG_NOTICE, NGX_LOG_WARN,
};
use ngx::core::{CoreModuleMainConf, NgxCoreModule};

use crate::ffi::guard;
use crate::ffi::loop_cell::LoopCell;

/// How often the timer looks whether requests are still outstanding.
const RECHECK_MS: usize = 500;

/// How long an exiting worker waits for requests inside Python when `worker_shutdown_timeout`
/// is not set.
const EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS: ngx_msec_t = 60_000;

static OUTSTANDING: AtomicUsize = AtomicUsize::new(0);
/// Those of them that are ASGI requests (a stuck event loop holds them for ever).
static OUTSTANDING_ASGI: AtomicUsize = AtomicUsize::new(0);
/// Those of them that are WSGI requests past their deadline whose threads have not come back.
static OUTSTANDING_LOST: AtomicUsize = AtomicUsize::new(0);
/// The worker exits because every thread of a pool is lost (`recycle::pool_stuck`): requests
/// past their deadline are not waited for.
static LET_GO_OF_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The connections of the requests inside Python, with those requests (addresses; one entry
/// per request).
static CONNECTIONS: LoopCell<Vec<(usize, usize)>> = LoopCell::new(Vec::new());
/// Run at each check while the worker exits with requests outstanding (event streams are
/// ended, WebSockets told to close: those that start late too).
static WHILE_EXITING: std::sync::Mutex<Vec<fn()>> = std::sync::Mutex::new(Vec::new());

/// What the ASGI side does for a worker's exit, set at the worker's start: with its event loop
/// stuck (in an app's call that never returns), the requests that loop holds cannot end, and
/// must not keep the worker; past the exit's bound, the tasks of those it runs are cancelled.
#[derive(Clone, Copy)]
pub(crate) struct AsgiExit {
    /// Whether the loop is stuck now.
    pub(crate) stuck: unsafe fn() -> bool,
    /// Answers the requests still waiting for the loop to start them.
    pub(crate) give_up_waiting: unsafe fn(),
    /// Lets the exit pass the deadlines of the requests the loop holds.
    pub(crate) let_go_of_held: unsafe fn() -> usize,
    /// Cancels the tasks of the ASGI requests still running (false: no loop to ask).
    pub(crate) cancel_running: fn() -> bool,
}

/// How long ASGI requests cancelled at the exit's bound may take to end before the worker ends
/// at once all the same (an app that catches the cancellation and goes on).
const CANCELLED_GRACE_MS: ngx_msec_t = 5000;
/// When the exit's bound cancelled the ASGI requests left (0: it has not).
static CANCELLED_AT: AtomicUsize = AtomicUsize::new(0);

static ASGI_EXIT: std::sync::OnceLock<AsgiExit> = std::sync::OnceLock::new();
/// Run before the worker ends at once, past the shutdown timeout.
static BEFORE_FORCED_EXIT: std::sync::Mutex<Vec<fn()>> = std::sync::Mutex::new(Vec::new());

/// Sets what the exit does with the ASGI event loop and its requests.
pub(crate) fn on_asgi_exit(hooks: AsgiExit) {
    let _ = ASGI_EXIT.set(hooks);
}

/// The handlers of the module's request deadlines (`wsgi_read_timeout`, WSGI and ASGI): they
/// bound requests inside Python, which the exit's default bound caps; they are not a
/// connection's activity that the exit waits for.
static REQUEST_DEADLINES: std::sync::Mutex<Vec<unsafe extern "C" fn(*mut ngx_event_t)>> =
    std::sync::Mutex::new(Vec::new());

/// Names a handler of the module's request deadlines (see [`REQUEST_DEADLINES`]).
pub(crate) fn request_deadline(f: unsafe extern "C" fn(*mut ngx_event_t)) {
    let mut all = REQUEST_DEADLINES.lock().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|&g| std::ptr::fn_addr_eq(g, f)) {
        all.push(f);
    }
}

/// Adds what runs (on the event loop) before the worker ends at once; once per `f`.
pub(crate) fn before_forced_exit(f: fn()) {
    add_hook(&BEFORE_FORCED_EXIT, f);
}

/// Adds what runs (on the event loop) at every check while the worker exits with requests
/// outstanding, the first included; once per `f`.
pub(crate) fn while_exiting(f: fn()) {
    add_hook(&WHILE_EXITING, f);
}

/// Adds `f` to `hooks` (once, however often it is added).
fn add_hook(hooks: &std::sync::Mutex<Vec<fn()>>, f: fn()) {
    let mut all = hooks.lock().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|g| std::ptr::fn_addr_eq(*g, f)) {
        all.push(f);
    }
}

/// Runs each of `hooks`, the lock released.
fn run_hooks(hooks: &std::sync::Mutex<Vec<fn()>>) {
    let all = hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for f in all {
        f();
    }
}
static mut TIMER: *mut ngx_event_t = ptr::null_mut();
/// When this worker was first seen exiting with requests inside Python (0: not yet).
static EXITING_SINCE: AtomicUsize = AtomicUsize::new(0);
/// What each request inside Python had moved (bytes sent, and of its body read) at the last
/// look, by request, and when one of them last moved (0: not yet looked).
static MOVED: LoopCell<(Vec<(usize, u64)>, ngx_msec_t)> = LoopCell::new((Vec::new(), 0));
/// The worker ends itself (recycling: `wsgi_max_requests`, `wsgi_max_rss`, an app that could
/// not load, a dead event loop), and nginx starts its successor only once it has ended.
static OWN_EXIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// When the worker last said it waits past the default bound for requests that move bytes
/// (0: it never did).
static MOVING_NOTICED_AT: AtomicUsize = AtomicUsize::new(0);
/// The worker said it waits past the default bound for its other connections.
static WAITED_WITH_OTHERS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Request `r` was handed to the thread pool.
///
/// # Safety
/// Event-loop thread only; `r` is live until [`finished`] for its connection.
pub(crate) unsafe fn started(r: *mut ngx_http_request_t) {
    OUTSTANDING.fetch_add(1, Relaxed);
    // SAFETY: per the function contract.
    unsafe {
        CONNECTIONS
            .get_mut()
            .push(((*r).connection as usize, r as usize))
    };
    // SAFETY: the timer static is only touched on the single event-loop thread.
    unsafe {
        let ev = timer();
        if (*ev).timer_set() == 0 {
            ngx_add_timer(ev, RECHECK_MS as _);
        }
    }
}

/// The request on connection `c` came back from the thread pool.
///
/// # Safety
/// Event-loop thread only.
pub(crate) unsafe fn finished(c: *mut ngx_connection_t) {
    let _ = OUTSTANDING.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    // SAFETY: per the function contract.
    let all = unsafe { CONNECTIONS.get_mut() };
    if let Some(i) = all.iter().rposition(|&(a, _)| a == c as usize) {
        all.swap_remove(i);
    }
}

/// How many requests are inside Python (WSGI and ASGI).
pub(crate) fn outstanding() -> usize {
    OUTSTANDING.load(Relaxed)
}

/// ASGI request `r` was handed to the event loop.
///
/// # Safety
/// As [`started`].
pub(crate) unsafe fn started_asgi(r: *mut ngx_http_request_t) {
    OUTSTANDING_ASGI.fetch_add(1, Relaxed);
    // SAFETY: per the function contract.
    unsafe { started(r) };
}

/// The ASGI request on connection `c` ended.
///
/// # Safety
/// Event-loop thread only.
pub(crate) unsafe fn finished_asgi(c: *mut ngx_connection_t) {
    let _ = OUTSTANDING_ASGI.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    // SAFETY: per the function contract.
    unsafe { finished(c) };
}

/// Whether `ev` is the read or write event of a connection whose request is inside Python: its
/// timers (a streamed response's slow client, an unbuffered upload) are the request's, which
/// the exit's bound caps, not a connection of nginx's that it waits for.
///
/// # Safety
/// Event-loop thread; `ev` is a live event.
unsafe fn of_a_request_inside_python(ev: *mut ngx_event_t) -> bool {
    // SAFETY: per the function contract; a listed connection is live while its request is
    // inside Python (the module holds the request), and is only compared before that.
    unsafe {
        let data = (*ev).data as usize;
        CONNECTIONS.get_mut().iter().any(|&(c, _)| {
            c == data && {
                let c = c as *mut ngx_connection_t;
                (*c).read == ev || (*c).write == ev
            }
        })
    }
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
            if ngx_exiting != 0 {
                // Before counting: what these end is not waited for.
                run_hooks(&WHILE_EXITING);
            }
            let stuck_loop = ASGI_EXIT.get().filter(|s| ngx_exiting != 0 && (s.stuck)());
            if let Some(stuck_loop) = stuck_loop {
                // Those the loop has not started are answered now; those it holds cannot end.
                (stuck_loop.give_up_waiting)();
            }
            let mut outstanding = OUTSTANDING.load(Relaxed);
            if let Some(stuck_loop) = stuck_loop {
                let held = OUTSTANDING_ASGI.load(Relaxed).min(outstanding);
                outstanding -= held;
                if outstanding == 0 && held > 0 {
                    // The worker exits without them once the others have ended.
                    (stuck_loop.let_go_of_held)();
                    crate::ffi::log::cycle_log(
                        NGX_LOG_ALERT as usize,
                        &format!("wsgi: {held} ASGI request(s) held by the stuck event loop are cut as the worker exits"),
                    );
                }
            }
            if outstanding == 0 {
                return;
            }
            let lost = OUTSTANDING_LOST.load(Relaxed);
            if ngx_exiting != 0
                && LET_GO_OF_LOST.load(Relaxed)
                && lost >= outstanding
                && !waits_with_others(ev, outstanding)
            {
                crate::ffi::log::cycle_log(
                    NGX_LOG_ALERT as usize,
                    &format!(
                        "wsgi: {outstanding} request(s) whose threads are stuck past \
                         wsgi_read_timeout are cut as the worker exits; exiting without \
                         finalizing Python"
                    ),
                );
                run_hooks(&BEFORE_FORCED_EXIT);
                libc::_exit(1);
            }
            if ngx_exiting != 0 {
                let now = ngx_current_msec;
                note_movement(now);
                let since = EXITING_SINCE.load(Relaxed);
                if since == 0 {
                    EXITING_SINCE.store(now.max(1), Relaxed);
                    crate::ffi::log::cycle_log(
                        NGX_LOG_NOTICE as usize,
                        &format!("wsgi: waiting for {outstanding} request(s) inside Python before exiting"),
                    );
                } else if now.saturating_sub(since) >= exit_bound()
                    && !waits_while_moving(outstanding, now)
                    && !cancel_asgi_left(outstanding, stuck_loop.is_some(), now)
                    && !waits_with_others(ev, outstanding)
                {
                    let after = if waited_while_moving() {
                        format!(
                            "{} ms into the worker's exit, none having moved a byte for {} ms{}",
                            now.saturating_sub(since),
                            EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS,
                            if WAITED_WITH_OTHERS.load(Relaxed) {
                                " and its other connections ended"
                            } else {
                                ""
                            }
                        )
                    } else if WAITED_WITH_OTHERS.load(Relaxed) {
                        format!(
                            "{} ms into the worker's exit, its other connections ended",
                            now.saturating_sub(since)
                        )
                    } else {
                        format!("after the shutdown timeout of {} ms", exit_bound())
                    };
                    crate::ffi::log::cycle_log(
                        NGX_LOG_ALERT as usize,
                        &format!(
                            "wsgi: {outstanding} request(s) still inside Python {after}; exiting \
                             without finalizing Python"
                        ),
                    );
                    run_hooks(&BEFORE_FORCED_EXIT);
                    libc::_exit(1);
                }
            }
            ngx_add_timer(ev, RECHECK_MS as _);
        }
    })
}

/// Whether the worker waited past the default bound for requests that moved bytes.
fn waited_while_moving() -> bool {
    MOVING_NOTICED_AT.load(Relaxed) != 0
}

/// A WSGI request inside Python passed its deadline with its thread still running (1), or that
/// thread came back (-1).
pub(crate) fn lost(delta: isize) {
    if delta > 0 {
        OUTSTANDING_LOST.fetch_add(1, Relaxed);
    } else {
        OUTSTANDING_LOST.fetch_sub(1, Relaxed);
    }
}

/// The worker exits because its threads are lost: once the requests left inside Python are
/// only those (answered at their deadlines; their threads are in calls that do not return),
/// it ends without waiting for them, as for the requests a stuck ASGI event loop holds.
pub(crate) fn let_go_of_lost() {
    LET_GO_OF_LOST.store(true, Relaxed);
}

/// The worker's exit is its own (see [`OWN_EXIT`]): it does not wait past the default bound
/// for requests that move bytes, since no worker takes its place meanwhile.
pub(crate) fn exit_is_the_workers_own() {
    OWN_EXIT.store(true, Relaxed);
}

/// Bytes each request inside Python has moved: sent to its client, and of its body read.
///
/// # Safety
/// Event-loop thread.
unsafe fn bytes_moved() -> Vec<(usize, u64)> {
    // SAFETY: per the function contract; a listed request and its connection are live while it
    // is inside Python (the module holds the request).
    unsafe {
        CONNECTIONS
            .get_mut()
            .iter()
            .map(|&(c, r)| {
                let sent = (*(c as *mut ngx_connection_t)).sent.max(0) as u64;
                let read = (*(*(r as *mut ngx_http_request_t)).main)
                    .request_length
                    .max(0) as u64;
                (r, sent.wrapping_add(read))
            })
            .collect()
    }
}

/// Notes whether a request inside Python moved bytes since the last look (one that came or
/// went meanwhile is no movement of the others).
///
/// # Safety
/// Event-loop thread.
unsafe fn note_movement(now: ngx_msec_t) {
    // SAFETY: per the function contract.
    unsafe {
        let moved = bytes_moved();
        let last = MOVED.get_mut();
        let any = last.1 == 0
            || moved.iter().any(|&(r, n)| {
                last.0
                    .iter()
                    .any(|&(before_r, before)| before_r == r && before != n)
            });
        last.0 = moved;
        if any {
            last.1 = now.max(1);
        }
    }
}

/// Past the exit's default bound (no `worker_shutdown_timeout`), whether the worker goes on
/// waiting because its requests inside Python move bytes: a download or an upload that takes
/// longer than the bound (3 GiB at 40 MB/s) is not a request that never returns, and nginx
/// without that setting waits for a proxied one as long as it moves. The worker waits while
/// any of them has moved a byte within the bound (nginx's `send_timeout` and
/// `client_body_timeout` are 60 s too), then cuts those left. Logged once.
///
/// # Safety
/// Event-loop thread.
unsafe fn waits_while_moving(outstanding: usize, now: ngx_msec_t) -> bool {
    // SAFETY: per the function contract.
    let moved_at = unsafe { MOVED.get_mut().1 };
    // SAFETY: per the function contract.
    let waits = unsafe { shutdown_timeout() }.is_none()
        && !OWN_EXIT.load(Relaxed)
        && moved_at != 0
        && now.saturating_sub(moved_at) < EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS;
    if !waits {
        return false;
    }
    let noticed_at = MOVING_NOTICED_AT.load(Relaxed);
    if noticed_at == 0 {
        MOVING_NOTICED_AT.store(now.max(1), Relaxed);
        crate::ffi::log::cycle_log(
            NGX_LOG_NOTICE as usize,
            &format!(
                "wsgi: {outstanding} request(s) still inside Python after {} ms are moving \
                 bytes; the worker waits on while they do (worker_shutdown_timeout is not set), \
                 and cuts those left once none moved for {} ms",
                EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS,
                EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS
            ),
        );
    } else if now.saturating_sub(noticed_at) >= EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS {
        // An old worker that stays (an endless stream that keeps sending) shows in the log.
        MOVING_NOTICED_AT.store(now.max(1), Relaxed);
        crate::ffi::log::cycle_log(
            NGX_LOG_NOTICE as usize,
            &format!(
                "wsgi: {outstanding} request(s) inside Python still moving bytes {} ms into the \
                 worker's exit",
                exiting_for()
            ),
        );
    }
    true
}

/// Past the exit's default bound (no `worker_shutdown_timeout`), whether the worker goes on
/// waiting before it cuts its requests still inside Python, because its other connections are
/// active: without that setting nginx waits for every connection still sending or receiving (a
/// slow client's download of a static file, an upload to another location, a proxied request:
/// their timers), and ending the process cut them all. The requests inside Python are not
/// waited for (their own connections' timers, their `wsgi_read_timeout`): the bound caps them.
/// Logged once.
///
/// # Safety
/// Event-loop thread; `ev` is the in-flight timer.
unsafe fn waits_with_others(ev: *mut ngx_event_t, outstanding: usize) -> bool {
    // SAFETY: per the function contract.
    let waits = unsafe {
        let deadlines = REQUEST_DEADLINES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        shutdown_timeout().is_none()
            && crate::ffi::timer::others_hold_the_exit(|other| {
                other == ev
                    || crate::ffi::timer::handled_by(other, &deadlines)
                    || of_a_request_inside_python(other)
            })
    };
    if waits && !WAITED_WITH_OTHERS.swap(true, Relaxed) {
        crate::ffi::log::cycle_log(
            NGX_LOG_NOTICE as usize,
            &format!(
                "wsgi: {outstanding} request(s) still inside Python after {} ms; the worker \
                 waits on while its other connections are active (worker_shutdown_timeout is \
                 not set), then cuts them",
                EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS
            ),
        );
    }
    waits
}

/// `worker_shutdown_timeout`, if set.
///
/// # Safety
/// Event-loop thread.
unsafe fn shutdown_timeout() -> Option<ngx_msec_t> {
    // SAFETY: the cycle and its core configuration live as long as the worker.
    let configured =
        NgxCoreModule::main_conf(unsafe { &*ngx_cycle }).map_or(0, |ccf| ccf.shutdown_timeout);
    (configured != 0 && configured != ngx_msec_t::MAX).then_some(configured)
}

/// At the exit's bound, with only ASGI requests left on a loop that runs: their tasks are
/// cancelled (as at a fast stop), so that they end, and the worker goes on to its normal end:
/// the apps' lifespan shutdown, their exit handlers, Python's finalization. Whether the worker
/// waits for them (false: it ends at once, as with WSGI requests left, whose threads cannot be
/// stopped, or once the cancelled ones had `CANCELLED_GRACE_MS` to end).
fn cancel_asgi_left(outstanding: usize, loop_stuck: bool, now: ngx_msec_t) -> bool {
    let cancelled_at = CANCELLED_AT.load(Relaxed);
    if cancelled_at != 0 {
        return now.saturating_sub(cancelled_at) < CANCELLED_GRACE_MS;
    }
    if loop_stuck || OUTSTANDING_ASGI.load(Relaxed) < outstanding {
        return false;
    }
    if !ASGI_EXIT
        .get()
        .is_some_and(|hooks| (hooks.cancel_running)())
    {
        return false;
    }
    CANCELLED_AT.store(now.max(1), Relaxed);
    let after = if waited_while_moving() {
        format!(
            "{} ms into the worker's exit, none having moved a byte for {} ms,",
            exiting_for(),
            EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS
        )
    } else {
        // SAFETY: on the event loop (the exit's timer).
        format!("after the shutdown timeout of {} ms", unsafe {
            exit_bound()
        })
    };
    crate::ffi::log::cycle_log(
        NGX_LOG_WARN as usize,
        &format!(
            "wsgi: {outstanding} ASGI request(s) still running {after} are cancelled; the apps' \
             lifespan shutdown follows"
        ),
    );
    true
}

/// How long this worker has been exiting with requests outstanding (0: it is not, or it has
/// just begun).
pub(crate) fn exiting_for() -> ngx_msec_t {
    match EXITING_SINCE.load(Relaxed) {
        0 => 0,
        // SAFETY: plain read of nginx's cached clock; the value is only compared.
        since => unsafe { ngx_current_msec }.saturating_sub(since),
    }
}

/// How long an exiting worker waits for its requests at all: `worker_shutdown_timeout`, else
/// the default.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn exit_bound() -> ngx_msec_t {
    // SAFETY: per the function contract.
    unsafe { shutdown_timeout() }.unwrap_or(EXIT_BOUND_WITHOUT_WORKER_SHUTDOWN_TIMEOUT_MS)
}
