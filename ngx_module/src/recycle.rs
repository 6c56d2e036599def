//! Worker recycling (`wsgi_max_requests N [jitter=M]`, `wsgi_max_rss SIZE`): a worker that has
//! served enough requests, or grown too large, first drains its keep-alive connections (each
//! next response says `Connection: close`), then stops accepting, finishes what it has in flight
//! and exits; nginx's master starts a fresh one in its place. Event-loop thread only.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use ngx_wsgi::recycle::{Due, Limits};

use nginx_sys::{
    ngx_connection_t, ngx_current_msec, ngx_cycle, ngx_event_t, ngx_exiting, ngx_http_request_t,
    ngx_msec_t, ngx_quit, NGX_HTTP_MODULE, NGX_HTTP_SWITCHING_PROTOCOLS, NGX_HTTP_VERSION_11,
    NGX_LOG_ALERT, NGX_LOG_ERR, NGX_LOG_NOTICE,
};

use crate::ffi::guard;
use crate::ffi::timer::WorkerTimer;

static LIMITS: Limits = Limits::new();
/// Requests handed to their apps.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// The longest a recycling worker drains its keep-alive connections before it exits. nginx's
/// own exit closes the idle ones at once, and a request a client sent on one in that instant is
/// lost (nginx does so at every reload; recycling makes it routine). Draining, the worker serves
/// on as before, and a busy connection's next response closes it; one idle for longer meets the
/// race any keep-alive timeout has, which clients retry.
const DRAIN_MS: ngx_msec_t = 2000;
/// How often the drain looks for idle connections left.
const DRAIN_CHECK_MS: ngx_msec_t = 25;

/// The worker decided to recycle and is draining.
static DRAINING: AtomicBool = AtomicBool::new(false);
static DRAIN_STARTED: AtomicUsize = AtomicUsize::new(0);

static DRAIN_TIMER: WorkerTimer = WorkerTimer::new();

/// How long a worker that could not load an app (or start Python) serves without it before it
/// replaces itself to try again: each try is Python's start and every import, once per worker.
pub(crate) const RETRY_LOAD_MS: ngx_msec_t = 10_000;
static RETRY_TIMER: WorkerTimer = WorkerTimer::new();

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
pub(crate) fn request_done() {
    crate::heap_trim::activity();
    let why = match LIMITS.request_done() {
        None => return,
        Some(Due::Requests(served)) => format!("served {served} requests (wsgi_max_requests)"),
        Some(Due::Memory(rss, max)) => {
            format!("uses {} MiB (wsgi_max_rss {} MiB)", rss >> 20, max >> 20)
        }
    };
    recycle(&why, true);
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
    if ending() || unsafe { ngx_exiting != 0 } {
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

unsafe extern "C" fn retry_load(_ev: *mut ngx_event_t) {
    guard("replacing a worker that could not load an app", (), || {
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
    if DRAINING.load(Relaxed) {
        if !drain {
            exit_now();
        }
        return;
    }
    crate::ffi::log::cycle_log(
        NGX_LOG_NOTICE as usize,
        &format!("wsgi: this worker {why}; recycling it"),
    );
    crate::metrics::recycled();
    if !drain {
        exit_now();
        return;
    }
    DRAINING.store(true, Relaxed);
    // SAFETY: plain read of nginx's cached clock on the event loop.
    DRAIN_STARTED.store(unsafe { ngx_current_msec }, Relaxed);
    // SAFETY: the event is a static, on the event loop; cancelable, it does not hold an exit
    // that nginx begins meanwhile (a reload, a quit).
    unsafe {
        crate::ffi::timer::keep_armed(
            DRAIN_TIMER.event(),
            Some(drain_check),
            std::ptr::null_mut(),
            DRAIN_CHECK_MS,
        )
    };
}

/// Whether a response now closes its connection: the worker is draining or exiting. (Once
/// nginx's exit began, its header filter says so itself.)
pub(crate) fn ending() -> bool {
    // SAFETY: nginx's own flag, read on the event loop.
    DRAINING.load(Relaxed) || unsafe { ngx_quit != 0 }
}

/// The drain's timer: the worker exits once no keep-alive connection is idle, or at the bound.
unsafe extern "C" fn drain_check(ev: *mut ngx_event_t) {
    guard("draining a recycling worker", (), || {
        // SAFETY: nginx's flags and clock, read on the event loop.
        let (exiting, now) = unsafe { (ngx_exiting != 0 || ngx_quit != 0, ngx_current_msec) };
        if exiting {
            return;
        }
        let waited = now.saturating_sub(DRAIN_STARTED.load(Relaxed));
        // SAFETY: on the event loop.
        if waited >= DRAIN_MS || !unsafe { keep_alive_connections() } {
            exit_now();
        } else {
            // SAFETY: the event is the static drain timer, on the event loop.
            unsafe { nginx_sys::ngx_add_timer(ev, DRAIN_CHECK_MS) };
        }
    })
}

/// Whether any client's HTTP/1 connection is, or will be, kept alive: one that waits idle for
/// its next request (nginx's exit closes those at once), or one whose response under way
/// promised keep-alive (a head that went out before the worker decided to recycle, or another
/// location's: nginx's exit would close it right after that response, and the request its
/// client sends next, at once, would be lost). The drain serves both their next request, which closes them. (HTTP/2
/// connections are marked idle for their whole life, and nginx's exit sends them a GOAWAY that
/// tells their clients what to retry; cached upstream connections have no listening socket.)
///
/// # Safety
/// Event-loop thread.
unsafe fn keep_alive_connections() -> bool {
    // SAFETY: the cycle's connection array has `connection_n` entries for the process's life; a
    // free one has fd -1. An idle HTTP/1 connection's `data` is its ngx_http_connection_t, an
    // HTTP/2 one's its ngx_http_v2_connection_t, whose first field points back to the
    // connection (the other's first field is its address configuration); a busy HTTP/1
    // connection's `data` is its request, which starts with nginx's signature and the
    // connection. Whatever else a listening connection's `data` is (an HTTP/2 or a stream
    // module's session, an HTTP/3 stream's) is at least those two fields long, and the request
    // is only read further once both say it is one.
    unsafe {
        let cycle = ngx_cycle;
        let connections = std::slice::from_raw_parts((*cycle).connections, (*cycle).connection_n);
        connections.iter().any(|c| {
            if c.fd == -1 || c.listening.is_null() || c.data.is_null() {
                return false;
            }
            if c.idle() != 0 {
                return !std::ptr::eq(*c.data.cast::<*const ngx_connection_t>(), c);
            }
            let r = c.data.cast::<ngx_http_request_t>();
            if (*r).signature != NGX_HTTP_MODULE || !std::ptr::eq((*r).connection, c) {
                return false;
            }
            // The active request may be a subrequest: the connection's fate is the main one's.
            let main = (*r).main;
            // HTTP/3 requests have keepalive set too: their connection is QUIC's.
            (*main).http_version <= NGX_HTTP_VERSION_11 as usize
                && (*main).keepalive() != 0
                && (*main).header_sent() != 0
                && (*main).headers_out.status != NGX_HTTP_SWITCHING_PROTOCOLS as usize
        })
    }
}

/// A request the worker takes while it drains (or exits) closes its connection, whatever the
/// module answers (the app, or a 503 of a full queue).
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn close_if_ending(r: *mut ngx_http_request_t) {
    if ending() {
        // SAFETY: per the function contract.
        unsafe { (*(*r).main).set_keepalive(0) };
    }
}

fn exit_now() {
    // SAFETY: nginx's own flag, set on the event loop; the worker's cycle sees it after this
    // event and shuts down gracefully, like on SIGQUIT.
    unsafe { ngx_quit = 1 };
}
