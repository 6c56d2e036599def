//! Event streams (`text/event-stream` responses to a GET, WSGI or ASGI) under way. Some end by
//! themselves (an answer streamed token by token, a job's progress), some never do (a feed of
//! notifications): a worker that exits lets them go on for `wsgi_event_stream_grace`, then ends
//! those left cleanly, as complete responses, and their clients (EventSource reconnects by
//! itself) come back to the new workers, instead of being cut at `worker_shutdown_timeout`.
//! One that answers a POST is not listed (see `Stream::resumable`): its client cannot come back.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, Weak};

/// Whether an event stream answering `r` is one its client can ask for again: the request as the
/// client sent it is a GET (EventSource's one method) or a HEAD. An answer to a POST (a
/// completion streamed token by token: OpenAI's API, MCP's replies) cannot be asked for again,
/// and ended cleanly at the worker's exit it would read as the whole answer. The method of the
/// request line, not `r->method`: an X-Accel-Redirect or an `error_page` turns a POST into a GET
/// on its way to the streaming location, and a subrequest is always one.
///
/// # Safety
/// Event-loop thread; `r` is a live request.
pub(crate) unsafe fn resumable(r: *const nginx_sys::ngx_http_request_t) -> bool {
    // SAFETY: per the function contract; the main request outlives its subrequests.
    let main = unsafe { &*(*r).main };
    let line = crate::ffi::ngx_bytes(&main.request_line);
    let method = match line.iter().position(|&b| b == b' ') {
        Some(end) => &line[..end],
        // No line (nginx builds one for HTTP/2 and HTTP/3 too): the method nginx parsed.
        None => {
            return matches!(
                main.method as u32,
                nginx_sys::NGX_HTTP_GET | nginx_sys::NGX_HTTP_HEAD
            )
        }
    };
    method == b"GET" || method == b"HEAD"
}

/// A response that the server can end in its app's place.
pub(crate) trait EndsAtExit: Send + Sync {
    /// Ends the response cleanly, on the event loop; its app is then told as if its client had
    /// gone. False when it had ended already.
    fn end_for_exit(&self) -> bool;
}

struct Listed {
    /// "wsgi" or "asgi": how the log line counts it.
    kind: &'static str,
    stream: Weak<dyn EndsAtExit>,
}

/// By address of the listed object, which unlists itself when dropped.
static LISTED: Mutex<Option<HashMap<usize, Listed>>> = Mutex::new(None);

fn listed() -> MutexGuard<'static, Option<HashMap<usize, Listed>>> {
    LISTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lists an event stream (once its head is with the server, so that one ended at exit goes
/// out as its app's status). `key` is the listed object's address.
pub(crate) fn list(key: usize, kind: &'static str, stream: Weak<dyn EndsAtExit>) {
    crate::inflight::while_exiting(end_all_for_exit);
    listed()
        .get_or_insert_with(HashMap::new)
        .insert(key, Listed { kind, stream });
}

/// Takes a stream off the list (its object is being dropped).
pub(crate) fn unlist(key: usize) {
    if let Some(all) = listed().as_mut() {
        all.remove(&key);
    }
}

/// How many event streams [`end_all_for_exit`] would end now (on the event loop).
pub(crate) fn due_to_end() -> usize {
    match grace_over() {
        Some(_) => listed().as_ref().map_or(0, |all| {
            all.values().filter(|l| l.stream.strong_count() > 0).count()
        }),
        None => 0,
    }
}

/// The grace (ms) once it has passed for the exiting worker, `None` before.
fn grace_over() -> Option<nginx_sys::ngx_msec_t> {
    // SAFETY: the exit's checks run on the event loop; the cycle lives as long as the worker.
    let (grace, waited) = unsafe {
        let bound = crate::inflight::exit_bound();
        let grace = crate::conf::cycle_main_conf(&*nginx_sys::ngx_cycle)
            .map_or(0, |mc| mc.limits.event_stream_grace(bound));
        (grace, crate::inflight::exiting_for())
    };
    (waited >= grace).then_some(grace)
}

/// Worker exit (on the event loop, at each of the exiting worker's checks: a stream may start
/// after the first; and at the start of a drain that sends the clients elsewhere, before the
/// exit, where only a grace of 0 has passed: `exit_drain.rs`): once the grace has passed, every
/// event stream under way ends as if its app had ended it.
pub(crate) fn end_all_for_exit() {
    let Some(grace) = grace_over() else {
        return;
    };
    let streams: Vec<(&'static str, std::sync::Arc<dyn EndsAtExit>)> = listed()
        .take()
        .unwrap_or_default()
        .into_values()
        .filter_map(|l| Some((l.kind, l.stream.upgrade()?)))
        .collect();
    for kind in ["wsgi", "asgi"] {
        let ended = streams
            .iter()
            .filter(|(k, s)| *k == kind && s.end_for_exit())
            .count();
        if ended > 0 {
            crate::ffi::log::cycle_log(
                nginx_sys::NGX_LOG_NOTICE as usize,
                &format!(
                    "{kind}: {ended} event stream(s) (text/event-stream) ended as the worker \
                     exits, after {grace} ms of grace (wsgi_event_stream_grace); their clients \
                     reconnect to the new workers"
                ),
            );
        }
    }
}
