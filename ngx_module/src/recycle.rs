//! Worker recycling (`wsgi_max_requests N [jitter=M]`, `wsgi_max_rss SIZE`): a worker that has
//! served enough requests, or grown too large, stops accepting, finishes what it has in flight
//! and exits; nginx's master starts a fresh one in its place. Event-loop thread only.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use nginx_sys::{ngx_current_msec, ngx_exiting, ngx_http_request_t, ngx_quit, NGX_LOG_NOTICE};

/// Requests this worker may serve (0: no limit), drawn once at worker start.
static LIMIT: AtomicU64 = AtomicU64::new(0);
static SERVED: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
/// `wsgi_max_rss` in bytes (0: no limit).
static MAX_RSS: AtomicUsize = AtomicUsize::new(0);
static LAST_RSS_CHECK: AtomicUsize = AtomicUsize::new(0);

/// How often, at most, the worker's size is read.
const RSS_CHECK_MS: usize = 1000;

/// Sets the limits for this worker (from `init_process`).
pub(crate) fn configure(max_requests: u64, jitter: u64, max_rss: usize) {
    let extra = if jitter > 0 {
        nginx_sys::ngx_random() as u64 % (jitter + 1)
    } else {
        0
    };
    LIMIT.store(
        if max_requests > 0 {
            max_requests + extra
        } else {
            0
        },
        Relaxed,
    );
    MAX_RSS.store(max_rss, Relaxed);
}

/// A request was handed to its app. The one that brings the worker to `wsgi_max_requests`, and
/// any after it, answers with `Connection: close`: the worker exits once they are served, and
/// a client that kept the connection would send its next request into a closing socket. (A
/// head sent once `wsgi_max_rss` made the worker recycle says so too: `response::send_head`.)
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn request_started(r: *mut ngx_http_request_t) {
    let limit = LIMIT.load(Relaxed);
    if limit > 0 && STARTED.fetch_add(1, Relaxed) + 1 >= limit {
        // SAFETY: per the function contract.
        unsafe { (*(*r).main).set_keepalive(0) };
    }
}

/// A request finished; starts a graceful exit of the worker when it is due.
pub(crate) fn request_done() {
    let served = SERVED.fetch_add(1, Relaxed) + 1;
    let limit = LIMIT.load(Relaxed);
    if limit > 0 && served == limit {
        recycle(&format!("served {served} requests (wsgi_max_requests)"));
        return;
    }
    let max_rss = MAX_RSS.load(Relaxed);
    if max_rss == 0 {
        return;
    }
    // SAFETY: plain read of nginx's cached clock on the event loop.
    let now = unsafe { ngx_current_msec };
    if now.saturating_sub(LAST_RSS_CHECK.load(Relaxed)) < RSS_CHECK_MS {
        return;
    }
    LAST_RSS_CHECK.store(now, Relaxed);
    if let Some(rss) = resident_bytes() {
        if rss > max_rss {
            recycle(&format!(
                "uses {} MiB (wsgi_max_rss {} MiB)",
                rss >> 20,
                max_rss >> 20
            ));
        }
    }
}

/// The worker's ASGI event loop died (its requests were answered): a fresh worker takes over.
/// Event-loop thread.
pub(crate) fn loop_died() {
    recycle("lost its ASGI event loop");
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

fn recycle(why: &str) {
    // SAFETY: nginx's own flags, read and set on the event loop; the worker's cycle sees
    // `ngx_quit` after this event and shuts down gracefully, like on SIGQUIT.
    unsafe {
        if ngx_exiting != 0 || ngx_quit != 0 {
            return;
        }
        crate::ffi::log::cycle_log(
            NGX_LOG_NOTICE as usize,
            &format!("wsgi: this worker {why}; recycling it"),
        );
        crate::metrics::recycled();
        ngx_quit = 1;
    }
}

/// The worker's resident set size.
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: plain sysconf call.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * usize::try_from(page).ok()?)
}
