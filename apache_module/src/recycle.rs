//! Child recycling (`NgxWsgiMaxRequests N [jitter=M]`, `NgxWsgiMaxRSS SIZE`): a child that has
//! served enough requests, or grown too large, waits for another child that serves when none
//! does ([`crate::sibling_children`]), drains its keep-alive connections
//! ([`crate::keepalive_drain`]), stops taking connections, finishes what it has and exits; the
//! parent starts a fresh one in its place (see [`crate::graceful`]).

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ngx_wsgi::recycle::{Due, Limits};

use crate::bindings::{
    ap_conn_keepalive_e_AP_CONN_CLOSE, request_rec, APLOG_ERR, APLOG_NOTICE, OK,
};
use crate::config::Registry;

static LIMITS: Limits = Limits::new();
/// This child is on its way out.
static RECYCLING: AtomicBool = AtomicBool::new(false);
/// How long a due child waits for a sibling: the parent starts children at its maintenance,
/// once a second, and a fresh one imports its apps first.
const SIBLING_WAIT: Duration = Duration::from_secs(3);
/// How often the waiting child looks (a fresh child may serve its requests within a second).
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Sets this child's limits (from `child_init`).
pub(crate) fn configure(registry: &Registry) {
    LIMITS.configure(
        registry.max_requests,
        registry.max_requests_jitter,
        registry.max_rss,
    );
}

/// An app's request is over; starts the child's graceful exit when it is due. `head_sent`: its
/// head went out already (a streamed response), promising keep-alive unless the child was
/// recycling as the request started.
///
/// # Safety
/// `r` is the live request, on its own thread.
pub(crate) unsafe fn request_done(r: *mut request_rec, head_sent: bool) {
    if let Some(due) = LIMITS.request_done() {
        let why = match due {
            Due::Requests(n) => format!("served {n} requests (NgxWsgiMaxRequests)"),
            Due::Memory(rss, max) => {
                format!("uses {} MiB (NgxWsgiMaxRSS {} MiB)", rss >> 20, max >> 20)
            }
        };
        if crate::graceful::prefork() || !crate::sibling_children::may_have_siblings() {
            // SAFETY: per the function contract.
            unsafe { begin(&why, "", r) };
        } else {
            begin_once_another_serves(why);
        }
    }
    if !head_sent {
        // SAFETY: per the function contract.
        unsafe { close_if_recycling(r) };
    }
    // Else its client was told the connection stays: closing it after the response would
    // lose the request the client sends next, at once; the drain serves that one, and closes.
}

/// Under the event and worker MPMs: begins the recycle, from a thread of its own, once no other
/// child is on its way out and another serves, or after [`SIBLING_WAIT`] (prefork's children
/// each serve one connection, and their stop closes no kept one; a child alone by configuration
/// has none to wait for). It says it is due first, so that of children due at once one goes
/// at a time.
fn begin_once_another_serves(why: String) {
    let since = Instant::now();
    let due = crate::sibling_children::this_one_is_due();
    let why_again = why.clone();
    let wait = move || {
        let waited = loop {
            let waited = since.elapsed();
            if waited >= SIBLING_WAIT || crate::sibling_children::may_leave(due) {
                break waited;
            }
            std::thread::sleep(LOOK_EVERY);
        };
        let after = match waited.as_millis() {
            0..100 => String::new(),
            ms => format!(" (after {ms} ms spent waiting for another child to serve)"),
        };
        // SAFETY: no request: the event and worker MPMs' drain needs none.
        unsafe { begin(&why, &after, std::ptr::null_mut()) };
    };
    if let Err(e) = ngx_wsgi::signals::spawn_helper("wsgi-recycle", None, wait) {
        crate::log::write(
            APLOG_ERR as c_int,
            &format!("wsgi: cannot start the thread that waits for another child: {e}"),
        );
        // SAFETY: no request: the event and worker MPMs' drain needs none.
        unsafe { begin(&why_again, "", std::ptr::null_mut()) };
    }
}

/// The child is due (`why`; `after`: what it waited for): logged, counted, and its drain
/// begun, once.
///
/// # Safety
/// `r` is null or the live request, on its own thread.
unsafe fn begin(why: &str, after: &str, r: *mut request_rec) {
    if !leaves() {
        return;
    }
    crate::log::write(
        APLOG_NOTICE as c_int,
        &format!("wsgi: this child {why}; recycling it{after}"),
    );
    // SAFETY: per the function contract.
    unsafe { crate::keepalive_drain::then(stop, r) };
}

/// Every thread of this child is stuck past its deadline (`crate::stuck_child`): counted, its
/// connections closed as they end, and its MPM told to stop (which would wait for those threads:
/// the caller ends the process). A drain under way stops it already.
pub(crate) fn stuck() {
    if leaves() {
        stop();
    }
}

/// Marks this child as on its way out (its connections close as they end, its siblings are
/// told, the recycle is counted); false when it was already.
fn leaves() -> bool {
    if RECYCLING.swap(true, Relaxed) {
        return false;
    }
    ngx_wsgi::metrics::recycled();
    crate::sibling_children::this_one_leaves();
    true
}

/// How long a child that could not load its apps (or start Python) serves without them before
/// it recycles, so that a fresh one tries again.
const RETRY_LOAD: std::time::Duration = std::time::Duration::from_secs(10);

/// The child could not load its apps at its start (a file broken on disk since the check, a
/// dependency down for a while): it recycles in [`RETRY_LOAD`], and the parent's fresh child
/// imports them again. Its requests are 500s meanwhile, which count toward no limit.
pub(crate) fn retry_load_later() {
    let started = ngx_wsgi::signals::spawn_helper("wsgi-retry-load", None, || {
        std::thread::sleep(RETRY_LOAD);
        // SAFETY: no request: under prefork the child stops after its connection under way.
        unsafe {
            begin(
                "could not load its apps at its start",
                "",
                std::ptr::null_mut(),
            )
        };
    });
    if let Err(e) = started {
        crate::log::write(
            APLOG_ERR as c_int,
            &format!("wsgi: cannot start the thread that recycles this child: {e}"),
        );
    }
}

/// A request reached an application this child could not load: it gets a 500. Logged once
/// per child, not per request (a flood under load; the child's start logged why).
pub(crate) fn unloaded_app_asked() {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Relaxed) {
        crate::log::write(
            APLOG_ERR as c_int,
            "wsgi: the application of this location was not loaded in this process (see the error \
             log at its start): it answers 500, logged once per child, until a fresh child \
             replaces it",
        );
    }
}

/// Marks every request of a recycling child, an app's or not, as closing its connection
/// (`post_read_request`): a static file's keep-alive connection is drained too.
///
/// # Safety
/// `r` is a live request, on its own thread.
pub(crate) unsafe extern "C" fn post_read_request(r: *mut request_rec) -> c_int {
    crate::ffi_guard::guard(
        "marking a request of a recycling child",
        OK as c_int,
        || {
            // SAFETY: per the function contract.
            unsafe { close_if_recycling(r) };
            OK as c_int
        },
    )
}

/// A request of a recycling child closes its connection: its client goes to a child that
/// stays. (Marked as the request starts, its response says so.)
///
/// # Safety
/// `r` is the live request, on its own thread.
pub(crate) unsafe fn close_if_recycling(r: *mut request_rec) {
    if RECYCLING.load(Relaxed) {
        // SAFETY: per the function contract.
        unsafe { (*(*r).connection).keepalive = ap_conn_keepalive_e_AP_CONN_CLOSE };
    }
}

fn stop() {
    if let Err(e) = crate::graceful::stop_child() {
        crate::log::write(
            APLOG_ERR as c_int,
            &format!("wsgi: cannot recycle this child: {e}"),
        );
    }
}
