//! Saying no when too many requests wait: a 503 with `Retry-After` at once (nginx's error page,
//! so `error_page 503` applies), counted, and one error-log entry per second at most, however
//! many requests are refused. Refusals that second's entry did not count are logged when the
//! second ends, so a burst's count is whole without waiting for another 503.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use nginx_sys::{
    ngx_current_msec, ngx_event_t, ngx_http_request_t, ngx_list_push, ngx_msec_t, ngx_table_elt_t,
    NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ERR,
};

use crate::dispatch::Refused;
use crate::ffi::guard;
use crate::ffi::loop_cell::LoopCell;
use crate::ffi::pool::pool_str;
use crate::ffi::timer::WorkerTimer;

/// nginx's clock at the last log entry about refused requests.
static LAST_LOGGED: AtomicUsize = AtomicUsize::new(0);
/// Requests refused since that entry.
static SINCE: AtomicUsize = AtomicUsize::new(0);
/// Why the last refusal not logged yet was refused.
static PENDING: LoopCell<Option<Refused>> = LoopCell::new(None);
/// Logs the refusals left when the second ends.
static FLUSH: WorkerTimer = WorkerTimer::new();

/// The shortest time between two entries.
const LOG_EVERY_MS: ngx_msec_t = 1000;

/// What the 503 says, and how long the client should wait before it tries again.
///
/// # Safety
/// Event-loop thread; `r` is live and has sent nothing.
pub(crate) unsafe fn refuse(
    r: *mut ngx_http_request_t,
    why: Refused,
    queue_timeout: ngx_msec_t,
) -> u32 {
    crate::metrics::refused();
    // SAFETY: per the function contract.
    unsafe { log_refusal(why) };
    if matches!(why, Refused::LoopStalled | Refused::LoopExpired) {
        // Where the app holds the loop: what the operator needs to find the blocking call.
        if let Some(event_loop) = ngx_wsgi::asgi::event_loop::get() {
            event_loop.log_where_stalled(std::time::Duration::from_millis(queue_timeout as u64));
        }
    }
    // SAFETY: per the function contract.
    unsafe {
        // A body still arriving (wsgi_request_buffering off) makes nginx close the connection
        // after the 503: its head must not promise keep-alive, also when `error_page 503`
        // answers from another location (the header filter only knows the app's).
        if (*r).reading_body() != 0 {
            (*(*r).main).set_keepalive(0);
        }
    }
    let seconds = queue_timeout.div_ceil(1000).max(1).to_string();
    // SAFETY: per the function contract; nginx keeps the app-less headers of a special response.
    unsafe {
        let h = ngx_list_push(&mut (*r).headers_out.headers) as *mut ngx_table_elt_t;
        if !h.is_null() {
            if let (Ok(key), Ok(value), Ok(low)) = (
                pool_str(r, b"Retry-After", false),
                pool_str(r, seconds.as_bytes(), false),
                pool_str(r, b"retry-after", false),
            ) {
                (*h).hash = 1;
                #[cfg(ngx_table_elt_next)]
                {
                    (*h).next = std::ptr::null_mut();
                }
                (*h).key = key;
                (*h).value = value;
                (*h).lowcase_key = low.data;
            } else {
                (*h).hash = 0;
            }
        }
    }
    NGX_HTTP_SERVICE_UNAVAILABLE
}

/// # Safety
/// Event-loop thread.
unsafe fn log_refusal(why: Refused) {
    SINCE.fetch_add(1, Relaxed);
    // SAFETY: plain read of nginx's cached clock on the event loop.
    let now = unsafe { ngx_current_msec };
    let last = LAST_LOGGED.load(Relaxed);
    let since_last = now.saturating_sub(last);
    if last != 0 && since_last < LOG_EVERY_MS {
        // SAFETY: on the event loop (per the function contract); the timer is a static, and
        // cancelable: it does not hold a worker that exits (which logs what is left itself).
        unsafe {
            PENDING.set(Some(why));
            crate::ffi::timer::keep_armed(
                FLUSH.event(),
                Some(flush_due),
                std::ptr::null_mut(),
                (LOG_EVERY_MS - since_last).max(1),
            );
        }
        return;
    }
    // SAFETY: on the event loop (per the function contract).
    unsafe { log_now(why, now) };
}

/// The end of the second after an entry: the refusals since then, if any.
unsafe extern "C" fn flush_due(_ev: *mut ngx_event_t) {
    guard("logging refused requests", (), || {
        // SAFETY: timers run on the event loop.
        unsafe { flush() }
    })
}

/// Logs the refusals not logged yet (the worker exits, or their second ended).
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn flush() {
    // SAFETY: per the function contract.
    unsafe {
        if let Some(why) = PENDING.get() {
            if SINCE.load(Relaxed) > 0 {
                log_now(why, ngx_current_msec);
            }
        }
        crate::ffi::timer::disarm(FLUSH.event());
    }
}

/// # Safety
/// Event-loop thread.
unsafe fn log_now(why: Refused, now: ngx_msec_t) {
    let count = SINCE.swap(0, Relaxed);
    LAST_LOGGED.store(now.max(1), Relaxed);
    // SAFETY: per the function contract.
    unsafe { PENDING.set(None) };
    let (reason, hint) = match why {
        Refused::Full => ("wsgi_max_queue requests already wait for a thread", THREADS),
        Refused::Stalled => (
            "the oldest waiting request has waited longer than wsgi_queue_timeout",
            THREADS,
        ),
        Refused::Expired => (
            "they waited longer than wsgi_queue_timeout for a thread",
            THREADS,
        ),
        Refused::NoThread => ("no pool thread could be started", THREADS),
        Refused::PoolStuck => (
            "the threads that could run them are stuck past wsgi_read_timeout",
            "the worker is being replaced; the error log's alert says why",
        ),
        Refused::LoopFull => (
            "wsgi_max_queue requests already wait for the asgi event loop to start them",
            LOOP_FULL,
        ),
        Refused::LoopStalled => (
            "the oldest request waiting for the asgi event loop has waited longer than wsgi_queue_timeout",
            LOOP,
        ),
        Refused::LoopExpired => (
            "they waited longer than wsgi_queue_timeout for the asgi event loop",
            LOOP,
        ),
        Refused::LoopDied => (
            "the asgi event loop of this worker died",
            "the worker is being replaced; the error log says why the loop died",
        ),
    };
    crate::ffi::log::cycle_log(
        NGX_LOG_ERR as usize,
        &format!(
            "wsgi: {count} request(s) answered 503 since the last such entry: {reason} ({hint})"
        ),
    );
}

const THREADS: &str = "every thread allowed is busy, or the threads wait for the GIL that a call \
                       in C code keeps (a regular expression, an extension); see wsgi_max_threads, \
                       wsgi_max_queue, wsgi_queue_timeout";
const LOOP: &str = "an app may keep the event loop busy without awaiting, with a blocking call \
                    in async code, say; see wsgi_max_queue, wsgi_queue_timeout";
/// A full queue may come of a burst alone: nginx takes many requests (HTTP/2 streams) in one
/// turn of its own loop, before the asyncio loop's next turn starts any.
const LOOP_FULL: &str = "more requests came at once than wsgi_max_queue (HTTP/2 streams of one \
                         connection, say), or an app keeps the event loop busy without awaiting, \
                         with a blocking call in async code; see wsgi_max_queue, \
                         wsgi_queue_timeout";
