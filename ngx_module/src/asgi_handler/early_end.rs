//! An ASGI request ended without its app: its deadline (`wsgi_read_timeout`: a 504, the task
//! cancelled), its wait for the loop past `wsgi_queue_timeout` (a 503), or its client gone
//! before the loop started it (a 499); and the requests held at a worker's exit let go.

use std::sync::Arc;

use nginx_sys::{
    ngx_event_t, ngx_http_request_t, ngx_int_t, NGX_ERROR, NGX_HTTP_CLIENT_CLOSED_REQUEST,
    NGX_LOG_ERR,
};
use ngx_wsgi::asgi::{AsgiLoop, TaskWatch};

use crate::app_turn::{self, AppKind};
use crate::asgi_request::AsgiRequest;
use crate::asgi_ws::AsgiWs;
use crate::dispatch::Refused;
use crate::ffi::{guard, timer};
use crate::request_body::BodyStream;
use crate::stream::{Stream, TimeoutAnswer};

/// `wsgi_read_timeout`: the app has not completed its response in time. The request is answered
/// now, without it: nginx's 504 (the location's `error_page 504` applies: the request is the
/// task's no more), or, when the response has started, a cut connection. The app's task is
/// cancelled on the asyncio loop (or interrupted, when it keeps the loop busy), and where it
/// was goes to the error log; a request the loop had not started yet never runs.
pub(crate) unsafe extern "C" fn on_deadline(ev: *mut ngx_event_t) {
    guard("the asgi read timeout", (), || {
        // SAFETY: the event's data is its AsgiRequest's `Arc::as_ptr`, alive while the timer is
        // set (the timer is disarmed before the request ends); on the event loop.
        unsafe {
            // Its own reference: ending the request frees the pool that holds the request's.
            let request = (*ev).data as *const AsgiRequest;
            Arc::increment_strong_count(request);
            let request = Arc::from_raw(request);
            let Some(event_loop) = ngx_wsgi::asgi::event_loop::get() else {
                return;
            };
            let Some(r) = request.end_early() else {
                return;
            };
            stop_timed_out(event_loop, &request.watch, &request.label);
            let (rc, _) = request.stream.time_out(r, TimeoutAnswer::AtFinalize);
            if let Some(body) = &request.body {
                body.fail("wsgi_read_timeout: the request timed out");
            }
            end_now(r, parts(&request), rc, 504);
        }
    })
}

/// The worker exits with its event loop stuck: the deadlines of the requests the loop holds no
/// longer hold the exit (those requests are cut as the process ends, which their deadlines,
/// `wsgi_read_timeout 1h` say, would otherwise keep waiting for). How many.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn let_go_of_held() -> usize {
    // SAFETY: per the function contract.
    unsafe { timer::let_exit_pass(&[on_deadline, crate::asgi_ws::handshake_due]) }
}

/// A request's deadline passed: a task the loop has not started never will (logged under
/// `label`); a started one is cancelled, or interrupted when it keeps the loop busy.
pub(super) fn stop_timed_out(event_loop: &'static AsgiLoop, watch: &Arc<TaskWatch>, label: &str) {
    if event_loop.give_up(watch) {
        crate::metrics::asgi_timed_out(false);
        crate::ffi::log::cycle_log(
            NGX_LOG_ERR as usize,
            &format!("{label}; it was still waiting for the asgi event loop and will not run"),
        );
    } else {
        event_loop.time_out(watch, label.to_owned());
    }
}

/// Takes a request the loop has not started back from it (its app will never run), for the
/// server to end: its request, unless it was ended otherwise meanwhile.
pub(super) fn take_back_unstarted(request: &AsgiRequest) -> Option<*mut ngx_http_request_t> {
    let event_loop = ngx_wsgi::asgi::event_loop::get()?;
    if !event_loop.give_up(&request.watch) {
        return None;
    }
    request.end_early()
}

/// The queue's sweeper: the request waited longer than `wsgi_queue_timeout` for the loop to
/// start it. It is taken back (it never runs) and answered 503.
///
/// # Safety
/// Event-loop thread; the request is live (blocked) unless its `end_early` says otherwise.
pub(super) unsafe fn expired_in_queue(request: &Arc<AsgiRequest>) {
    let Some(r) = take_back_unstarted(request) else {
        return;
    };
    // SAFETY: per the function contract: `r` is live and nothing of its response went out.
    unsafe {
        let timeout = crate::conf::main_conf_of(&*r).map_or(0, |mc| mc.limits.queue_timeout());
        request.stream.client_gone();
        let rc = crate::overload::refuse(r, Refused::LoopExpired, timeout);
        end_now(r, parts(request), rc as ngx_int_t, 503);
    }
}

/// The client of a request the loop has not started yet went away: it is taken back (it never
/// runs) and ends now (499, as nginx's proxy ends one whose client goes), its `wsgi_max_queue`
/// slot free again: clients that give up on a blocked loop do not get the next ones refused.
///
/// # Safety
/// Event-loop thread; the request is live (blocked) unless its `end_early` says otherwise.
pub(super) unsafe fn gone_while_queued(request: &Arc<AsgiRequest>) {
    let Some(r) = take_back_unstarted(request) else {
        return;
    };
    // SAFETY: per the function contract: `r` is live and nothing of its response went out.
    unsafe {
        end_now(
            r,
            parts(request),
            NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t,
            499,
        )
    };
}

/// [`gone_while_queued`] for a WebSocket handshake: its app never runs, and its slot in the
/// loop's queue is free at once.
///
/// # Safety
/// Event-loop thread; `ws` holds its request (live, blocked) unless it let go of it.
pub(super) unsafe fn handshake_gone_while_queued(ws: &Arc<AsgiWs>) {
    let Some(event_loop) = ngx_wsgi::asgi::event_loop::get() else {
        return;
    };
    if !event_loop.give_up(&ws.watch) {
        return;
    }
    // SAFETY: per the function contract.
    let Some(r) = (unsafe { ws.end_unstarted() }) else {
        return;
    };
    crate::metrics::websocket(-1);
    // SAFETY: `r` is live and nothing of its response went out.
    unsafe {
        end_now(
            r,
            (&ws.stream, None, None, ws.posted_at),
            NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t,
            499,
        )
    };
}

/// `wsgi_read_timeout` before a WebSocket's app accepted or denied it: answered as an HTTP
/// request that timed out (a 504, or a cut denial); the app's task is cancelled and where it
/// waited goes to the error log.
///
/// # Safety
/// Event-loop thread; `r` is live, blocked on the app, and no longer held by `ws`.
pub(super) unsafe fn ws_deadline(r: *mut ngx_http_request_t, ws: &AsgiWs) {
    if let Some(event_loop) = ngx_wsgi::asgi::event_loop::get() {
        stop_timed_out(event_loop, &ws.watch, &ws.label);
    }
    crate::metrics::websocket(-1);
    // SAFETY: per the function contract.
    unsafe {
        let (rc, _) = ws.stream.time_out(r, TimeoutAnswer::AtFinalize);
        end_now(r, (&ws.stream, None, None, ws.posted_at), rc, 504);
    }
}

/// Finalizes a request the server answered without the app (`rc`, counted as `status`); the
/// app's task, if any, runs on and its end is ignored. `parts`: the request's response stream,
/// body stream, deadline (disarmed here) and start.
///
/// # Safety
/// Event-loop thread; `r` is live, blocked on the app, and was taken from its exchange.
pub(super) unsafe fn end_now(
    r: *mut ngx_http_request_t,
    parts: EarlyEnd<'_>,
    rc: ngx_int_t,
    status: u16,
) {
    let (stream, body, deadline, posted_at) = parts;
    let rc = guard("ending an asgi request early", None, || {
        // SAFETY: per the function contract; nothing here finalizes the request.
        unsafe {
            if let Some(deadline) = deadline {
                timer::disarm(&mut *deadline.get());
            }
            app_turn::end(r, AppKind::Asgi, body, stream);
            crate::metrics::finished(status, posted_at.elapsed(), false, status == 499);
        }
        Some(rc)
    });
    // SAFETY: the request is live until this finalize.
    unsafe { app_turn::finalize(r, rc.unwrap_or(NGX_ERROR as ngx_int_t)) };
}

/// What [`end_now`] ends: a request's response stream, body stream, deadline and start.
pub(super) type EarlyEnd<'a> = (
    &'a Stream,
    Option<&'a BodyStream>,
    Option<&'a std::cell::UnsafeCell<ngx_event_t>>,
    std::time::Instant,
);

pub(super) fn parts(request: &AsgiRequest) -> EarlyEnd<'_> {
    (
        &request.stream,
        request.body.as_deref(),
        Some(&request.deadline),
        request.posted_at,
    )
}
