//! The life of one ASGI request, on nginx's side:
//!
//! 1. [`content_handler`]: nginx starts reading the body (or, unbuffered, hands it over as it
//!    arrives) and calls [`body_ready`].
//! 2. [`post`]: copies the scope, makes the request's [`AsgiRequest`] (the request's pool frees
//!    it) and submits it to the worker's asyncio loop; the request stays `blocked` meanwhile. The
//!    event loop never takes the GIL: the submission is a queue and an eventfd. Too many
//!    requests waiting for the loop to start them: a 503 at once ([`crate::asgi_queue`]).
//! 3. On the asyncio thread the app runs; its response leaves through the request's stream
//!    (the loop is woken per batch to send), its body arrives through [`on_body_data`], and
//!    [`on_client_readable`] notices a client that goes away.
//! 4. [`complete`], back on the event loop once the response is over: what is left goes out and
//!    the request is finalized. Or earlier, without the app: [`on_deadline`]
//!    (`wsgi_read_timeout`: a 504, the task cancelled) or [`expired_in_queue`] (a 503).

use std::ffi::c_void;
use std::sync::Arc;

use nginx_sys::{
    ngx_http_finalize_request, ngx_http_request_t, ngx_int_t, ngx_pool_cleanup_add, NGX_DONE,
    NGX_ERROR, NGX_HTTP_BAD_REQUEST, NGX_HTTP_CLIENT_CLOSED_REQUEST,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_INFO,
};
use ngx_wsgi::accel::AccelHeaders;
use ngx_wsgi::asgi::ws_handshake::{handshake, Handshake, WEBSOCKET_VERSION};
use ngx_wsgi::asgi::{HttpEnd, HttpRequest, WsRequest};
use ngx_wsgi::body_lease::BodyLease;
use ngx_wsgi::{Apps, Chunk, Outcome, OutcomeKind, ResponseHead};

use crate::app_turn::{self, AppKind};
use crate::asgi_request::{AnswersInPlace, AsgiRequest, RequestBody};
use crate::asgi_ws::{AsgiWs, WsHooks, WsSettings};
use crate::dispatch::QueueLimits;
use crate::ffi::{guard, module, timer};
use crate::request_body::BodyStream;
use crate::stream::{ClientEvents, Stream};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

mod client_events;
mod early_end;

use client_events::{on_body_data, on_client_readable, on_client_writable, on_ws_io, watch_client};
use early_end::{expired_in_queue, ws_deadline};
pub(crate) use early_end::{let_go_of_held, on_deadline};

/// The content handler of every `asgi_app` location.
pub(crate) unsafe extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard(
        "the asgi content handler",
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        // SAFETY: nginx passes a live request in its content phase.
        || unsafe { crate::request_body::read_then(r, Some(body_ready)) },
    )
}

unsafe extern "C" fn body_ready(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this with the live request whose body has been read (or is read as it
    // arrives).
    unsafe { crate::request_body::post_or_fail(r, post) }
}

unsafe fn post(r: *mut ngx_http_request_t) -> Result<(), u32> {
    // SAFETY: `r` is live on the event loop; this location has asgi_app.
    let (lc, mc) = unsafe {
        (
            crate::conf::loc_conf(&*r).ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR)?,
            crate::conf::main_conf_of(&*r).ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR)?,
        )
    };
    let app = lc.app.index.filter(|&i| Apps::get(i).is_some());
    let event_loop = ngx_wsgi::asgi::event_loop::get().filter(|l| l.started_up());
    let (Some(app), Some(event_loop)) = (app, event_loop) else {
        crate::recycle::unloaded_app_asked("asgi");
        return Err(NGX_HTTP_INTERNAL_SERVER_ERROR);
    };
    // SAFETY: `r` is live on the event loop; its body has been read whole (or refused) unless
    // it is read as it arrives.
    let whole_body = unsafe {
        ((*r).request_body_no_buffering() == 0).then(|| crate::request_info::app_body(&*r))
    };
    let body_length = whole_body.as_ref().and_then(|b| b.length);
    // SAFETY: `r` is live on the event loop.
    let scope = unsafe { crate::asgi_scope::collect(r, lc, mc.request_id.0, body_length) };
    // A subrequest (mirror, auth_request) has the client's headers but not its connection: an
    // Upgrade among them is the main request's, and the subrequest's app gets an HTTP scope.
    // SAFETY: `r` is live on the event loop.
    let handshake = match unsafe { r != (*r).main } {
        true => Handshake::None,
        false => handshake(&scope),
    };
    let websocket = match handshake {
        Handshake::None => false,
        Handshake::WebSocket => true,
        // SAFETY: `r` is live on the event loop and has sent nothing.
        Handshake::UnsupportedVersion => return unsafe { refuse_version(r) },
        // SAFETY: `r` is live on the event loop and has sent nothing.
        Handshake::Malformed(why) => return Err(unsafe { refuse_malformed(r, why) }),
    };
    let limits = QueueLimits {
        max_queue: mc.limits.asgi_max_queue(),
        queue_timeout: mc.limits.queue_timeout(),
    };
    // SAFETY: `r` is live on the event loop and has sent nothing.
    unsafe {
        crate::asgi_queue::admit(event_loop, limits)
            .map_err(|why| crate::overload::refuse(r, why, limits.queue_timeout))?;
    }
    let events = ClientEvents {
        writable: Some(on_client_writable),
        readable: Some(on_client_readable),
    };
    let stream = Stream::new(r, lc.streaming.stream_buffer, events);
    // SAFETY: `r` is live on the event loop; its body has been read, or is read as it arrives.
    let request_body = unsafe {
        match whole_body {
            Some(whole) => RequestBody::Whole(Arc::new(BodyLease::new(whole.body))),
            None => RequestBody::Streamed(BodyStream::new(r, lc.streaming.stream_buffer)),
        }
    };
    let (body, body_stream) = match &request_body {
        RequestBody::Whole(lease) => (Some(lease.clone()), None),
        RequestBody::Streamed(stream) => (None, Some(stream.clone())),
    };
    let waker = event_loop.waker();
    let wake: Arc<dyn Fn() + Send + Sync> = {
        let waker = waker.clone();
        Arc::new(move || waker.wake())
    };
    stream.set_waker(wake.clone());
    if let Some(b) = &body_stream {
        b.set_waker(wake.clone());
    }
    let read_timeout = lc.limits.read_timeout;
    let label = |what: &str| {
        if read_timeout == 0 {
            String::new()
        } else {
            format!(
                "wsgi_read_timeout: \"{}\" {what} after {read_timeout} ms{}",
                scope.request_line().escape_debug(),
                scope.log_suffix()
            )
        }
    };
    let served = if websocket {
        // SAFETY: `r` is live; its core configuration exists.
        let max = unsafe { max_message(r) };
        let settings = WsSettings {
            buffer: lc.streaming.stream_buffer,
            max_message: max,
            ping_interval: lc.websocket.ping_interval,
            idle_timeout: lc.websocket.idle_timeout,
            handshake_timeout: read_timeout,
            compression: lc.websocket.compression != 0,
            exit_code: lc.websocket.exit_code,
        };
        let hooks = WsHooks {
            on_end: complete_ws,
            on_deadline: ws_deadline,
            on_io: Some(on_ws_io),
        };
        let label = label("has neither accepted nor denied its WebSocket");
        Served::Ws(AsgiWs::new(r, stream.clone(), settings, wake, hooks, label))
    } else {
        Served::Http(AsgiRequest::new(
            r,
            stream.clone(),
            request_body,
            complete,
            read_timeout,
            label("is still running"),
            AnswersInPlace {
                redirects: !lc.ignore_headers.headers().contains(AccelHeaders::REDIRECT),
                // SAFETY: `r` is live on the event loop.
                intercepted: unsafe { crate::intercept_errors::statuses(r, lc) },
            },
        ))
    };
    // SAFETY: the request pool is live; its cleanup drops this reference when the request is
    // destroyed, which cannot happen while the app runs (`blocked`).
    let reading_body = unsafe {
        let cln = ngx_pool_cleanup_add((*r).pool, 0);
        if cln.is_null() {
            return Err(NGX_HTTP_INTERNAL_SERVER_ERROR);
        }
        let held = Box::into_raw(Box::new(served.clone()));
        (*cln).handler = Some(drop_served);
        (*cln).data = held.cast();
        *(*r).ctx.add(module().ctx_index) = held.cast::<c_void>();
        crate::main_blocked::hold(r);
        // A body the client broke already (a bad chunk in its first bytes) is read no more, as
        // `on_body_data` does once a later read fails: only the client's going is watched.
        let reading = body_stream
            .as_ref()
            .is_some_and(|b| !b.pull(r) && (*r).reading_body() != 0);
        (*r).read_event_handler = match reading {
            true => Some(on_body_data),
            false => Some(on_client_readable),
        };
        reading
    };
    // SAFETY: on the event loop; `r` is live, held, and its task submitted just below.
    unsafe { app_turn::begin(r, AppKind::Asgi) };
    crate::metrics::posted();
    match served {
        Served::Http(request) => {
            event_loop.submit(HttpRequest {
                app,
                scope: Arc::new(scope),
                body,
                server: request.clone(),
                waker,
                watch: request.watch.clone(),
            });
            // SAFETY: on the event loop; the deadline lives in the request's AsgiRequest,
            // which the request's pool keeps until after `complete` or `end_now` disarmed it.
            unsafe {
                timer::arm(
                    &mut *request.deadline.get(),
                    Some(on_deadline),
                    Arc::as_ptr(&request).cast_mut().cast(),
                    (*(*r).connection).log,
                    request.read_timeout,
                );
                crate::asgi_queue::waiting(&request, limits, expired_in_queue);
            }
        }
        Served::Ws(ws) => {
            crate::metrics::websocket(1);
            event_loop.submit_ws(WsRequest {
                app,
                scope: Arc::new(scope.into_websocket()),
                server: ws.clone(),
                waker,
                watch: ws.watch.clone(),
            });
            // SAFETY: on the event loop; the timer is disarmed when the connection ends.
            unsafe { ws.start_deadline() };
        }
    }
    if !reading_body {
        // A client that went while nginx read its request head left no event behind. (Its
        // task is started, and told at once.)
        // SAFETY: `r` is live on the event loop, inside nginx's content handler.
        unsafe { watch_client(r, false) };
    }
    Ok(())
}

/// A WebSocket handshake for another version than 13, which the app never sees: a 426 naming
/// the version this server speaks. Finalizes the request in place of the caller.
unsafe fn refuse_version(r: *mut ngx_http_request_t) -> Result<(), u32> {
    let mut head = ResponseHead::new(426, b"426 Upgrade Required", 3, 64);
    head.push_header(b"Sec-WebSocket-Version", WEBSOCKET_VERSION);
    head.push_header(b"Upgrade", b"websocket");
    // RFC 9110 7.8: an Upgrade header field goes with the `upgrade` connection option. nginx
    // writes its own Connection field (keep-alive or close); a second one adds to that list.
    head.push_header(b"Connection", b"upgrade");
    head.push_header(b"Content-Type", b"text/plain");
    // SAFETY: `r` is live on the event loop and has sent nothing; the body is static.
    unsafe {
        let rc = crate::response::send_whole(r, &head, UNSUPPORTED_VERSION);
        ngx_http_finalize_request(r, rc);
    }
    Ok(())
}

/// A malformed WebSocket handshake, which the app never sees: nginx's 400 (so `error_page 400`
/// applies), the reason in the error log at `info`, where nginx logs the other requests it
/// finds malformed.
unsafe fn refuse_malformed(r: *mut ngx_http_request_t, why: &str) -> u32 {
    // SAFETY: `r` is live; its connection's log outlives this call.
    let log = unsafe { (*(*r).connection).log };
    crate::ffi::log::write_log(
        NGX_LOG_INFO as usize,
        log,
        &format!("asgi: client sent a WebSocket handshake with {why}"),
    );
    NGX_HTTP_BAD_REQUEST
}

const UNSUPPORTED_VERSION: &[u8] = b"This server speaks WebSocket version 13 (RFC 6455) only.\n";

/// What an `asgi_app` request is: an HTTP exchange, or a WebSocket (before and after its
/// handshake). The request's module context points at it.
#[derive(Clone)]
pub(crate) enum Served {
    Http(Arc<AsgiRequest>),
    Ws(Arc<AsgiWs>),
}

impl Served {
    fn stream(&self) -> &Stream {
        match self {
            Served::Http(h) => &h.stream,
            Served::Ws(w) => &w.stream,
        }
    }
}

/// The largest WebSocket message of a location: its `client_max_body_size` (64 MiB when that
/// is 0, unlimited).
unsafe fn max_message(r: *mut ngx_http_request_t) -> usize {
    // SAFETY: per the caller: `r` is live, with its core location configuration.
    let clcf = unsafe { NgxHttpCoreModule::location_conf(&*r) };
    match clcf.map_or(0, |c| c.client_max_body_size) {
        0 => 64 << 20,
        n => n as usize,
    }
}

unsafe extern "C" fn drop_served(data: *mut c_void) {
    guard("freeing an asgi request", (), || {
        // SAFETY: `data` is the Box leaked in `post`, freed exactly once by this cleanup.
        drop(unsafe { Box::from_raw(data as *mut Served) });
    })
}

/// What the request is (None before `post` attached it). The reference is good only while the
/// request lives (its pool frees the box): a caller that may end the request clones the `Arc`
/// it goes on with first.
///
/// # Safety
/// Event-loop thread; `r` is live and served by an `asgi_app` location.
pub(crate) unsafe fn served(r: *mut ngx_http_request_t) -> Option<&'static Served> {
    // SAFETY: per the function contract; the slot holds NULL or the box attached in `post`,
    // which the request's pool keeps alive.
    unsafe {
        let p = *(*r).ctx.add(module().ctx_index) as *const Served;
        p.as_ref()
    }
}

/// Back on the event loop: the app's response is over.
///
/// # Safety
/// Event-loop thread; `r` is live and still blocked on the app.
unsafe fn complete(r: *mut ngx_http_request_t, request: &AsgiRequest, end: HttpEnd) {
    // SAFETY: per the function contract.
    unsafe {
        timer::disarm(&mut *request.deadline.get());
        finish(
            r,
            &request.stream,
            request.body.as_deref(),
            Some(&request.whole_response),
            request.posted_at,
            end,
            false,
        )
    }
}

/// A WebSocket is over: before its handshake it ends like an HTTP response (a denial); after
/// it, the connection closes.
///
/// # Safety
/// Event-loop thread; `r` is live and still blocked on the app.
unsafe fn complete_ws(r: *mut ngx_http_request_t, ws: &AsgiWs, end: HttpEnd, upgraded: bool) {
    crate::metrics::websocket(-1);
    // SAFETY: per the function contract.
    unsafe { finish(r, &ws.stream, None, None, ws.posted_at, end, upgraded) }
}

/// Sends what is left of the response (unless the connection was upgraded) and finalizes the
/// request, exactly once.
///
/// # Safety
/// Event-loop thread; `r` is live and still blocked on the app.
unsafe fn finish(
    r: *mut ngx_http_request_t,
    stream: &Stream,
    request_body: Option<&BodyStream>,
    whole_response: Option<&std::sync::Mutex<Option<Outcome>>>,
    posted_at: std::time::Instant,
    end: HttpEnd,
    upgraded: bool,
) {
    // SAFETY: per the function contract.
    let c = unsafe { (*r).connection };
    let rc = guard("sending the asgi response", None, || {
        // SAFETY: as above; nothing here finalizes the request.
        unsafe {
            let streamed = app_turn::end(r, AppKind::Asgi, request_body, stream);
            if let Some(status) =
                request_body.and_then(|b| b.client_fault_answer(r, streamed.head_sent || upgraded))
            {
                let gone = status == NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t;
                crate::metrics::finished(status as u16, posted_at.elapsed(), false, gone);
                return Some(status);
            }
            let kind = match end {
                HttpEnd::Complete => OutcomeKind::Complete,
                HttpEnd::Failed => OutcomeKind::Failed,
                HttpEnd::Truncated => OutcomeKind::Truncated,
                HttpEnd::ClientGone => OutcomeKind::ClientGone,
            };
            let mut whole = whole_response.map(|f| f.lock().unwrap_or_else(|e| e.into_inner()));
            let whole = whole
                .as_mut()
                .and_then(|f| f.as_mut())
                .filter(|_| !streamed.head_sent && !upgraded);
            // A connection that ended before the response began ends the request as a 499,
            // whatever the app's own end (its last send() queued as the client left), as WSGI
            // counts it.
            let gone = end == HttpEnd::ClientGone
                || (!upgraded && (*c).error() != 0 && !streamed.head_sent);
            let status = match (end, &whole) {
                _ if gone => 499,
                (HttpEnd::Failed, _) => 500,
                // Not sent yet: the app's own status, as for a WSGI response.
                (_, Some(whole)) => whole.head.as_ref().map_or(500, |h| h.status),
                _ => (*r).headers_out.status as u16,
            };
            crate::metrics::finished(status, posted_at.elapsed(), false, gone);
            if upgraded {
                // The WebSocket's close handshake is over (or the client went): the connection
                // closes with the request. One nginx terminated meanwhile (its shutdown timer
                // at a worker's exit closes every connection, and a blocked request's
                // termination marks its connection in error) holds the references its events
                // took since, which only a termination's end lets go: as done, it would stay
                // open ("open socket left" as the worker exits).
                let terminated = (*c).error() != 0;
                return Some(if terminated { NGX_ERROR } else { NGX_DONE } as ngx_int_t);
            }
            if let Some(whole) = whole {
                // http.response.pathsend: nginx sends the file (sendfile, byte ranges); the
                // descriptor stays open until the request's pool goes. X-Accel-Redirect: nginx
                // answers from its target.
                whole.kind = kind;
                return Some(crate::response::send(r, Some(whole), streamed));
            }
            let outcome = Outcome {
                kind,
                head: None,
                body: Chunk::from_vec(Vec::new()),
                streamed: true,
                length_known: false,
                file: None,
                gil_wait: std::time::Duration::ZERO,
            };
            Some(crate::response::send(r, Some(&outcome), streamed))
        }
    });
    // SAFETY: the request is live until this finalize.
    unsafe {
        let rc = rc.unwrap_or(if (*r).header_sent() != 0 {
            NGX_ERROR as ngx_int_t
        } else {
            NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
        });
        app_turn::finalize(r, rc);
    }
}
