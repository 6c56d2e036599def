//! Saying no when too many requests wait: a 503 with `Retry-After` at once (nginx's error page,
//! so `error_page 503` applies), counted, and one error-log entry per second at most, however
//! many requests are refused.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use nginx_sys::{
    ngx_current_msec, ngx_http_request_t, ngx_list_push, ngx_msec_t, ngx_table_elt_t,
    NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ERR,
};

use crate::dispatch::Refused;
use crate::ffi::pool::pool_str;

/// nginx's clock at the last log entry about refused requests.
static LAST_LOGGED: AtomicUsize = AtomicUsize::new(0);
/// Requests refused since that entry.
static SINCE: AtomicUsize = AtomicUsize::new(0);

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
    log_refusal(why);
    if matches!(why, Refused::LoopStalled | Refused::LoopExpired) {
        // Where the app holds the loop: what the operator needs to find the blocking call.
        if let Some(event_loop) = ngx_wsgi::asgi::event_loop::get() {
            event_loop.log_where_stalled(std::time::Duration::from_millis(queue_timeout as u64));
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

fn log_refusal(why: Refused) {
    let count = SINCE.fetch_add(1, Relaxed) + 1;
    // SAFETY: plain read of nginx's cached clock on the event loop.
    let now = unsafe { ngx_current_msec };
    let last = LAST_LOGGED.load(Relaxed);
    if last != 0 && now.saturating_sub(last) < 1000 {
        return;
    }
    LAST_LOGGED.store(now.max(1), Relaxed);
    SINCE.store(0, Relaxed);
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
        Refused::LoopFull => (
            "wsgi_max_queue requests already wait for the asgi event loop to start them",
            LOOP,
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

const THREADS: &str =
    "every thread allowed is busy; see wsgi_max_threads, wsgi_max_queue, wsgi_queue_timeout";
const LOOP: &str = "an app may keep the event loop busy without awaiting, with a blocking call \
                    in async code, say; see wsgi_max_queue, wsgi_queue_timeout";
