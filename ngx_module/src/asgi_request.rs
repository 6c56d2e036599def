//! One ASGI request on nginx's side: the streams its response and (unbuffered) body use, and
//! the end of its response, as the core's event loop sees them ([`HttpServer`]), and its deadline
//! (`wsgi_read_timeout`). Nothing here waits: where there is no room or no body yet, the core is
//! woken later through the streams' wakers.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use nginx_sys::{ngx_event_t, ngx_http_request_t, ngx_msec_t};
use ngx_wsgi::asgi::{BodyRead, HttpEnd, HttpServer, TaskWatch};
use ngx_wsgi::file_wrapper::FileRange;
use ngx_wsgi::intercepted::InterceptedStatuses;
use ngx_wsgi::{Chunk, ClientGone, Outcome, OutcomeKind, ResponseHead};

use crate::event_streams::{self, EndsAtExit};
use crate::ffi::LoopRequest;
use crate::notify::Pump;
use crate::request_body::BodyStream;
use crate::stream::Stream;
use ngx_wsgi::body_lease::BodyLease;

/// What the event loop does once the app's response is over (the request flow's completion).
pub(crate) type OnEnd = unsafe fn(*mut ngx_http_request_t, &AsgiRequest, HttpEnd);

struct Ending {
    /// The request, until its end has been handled; NULL afterwards.
    request: LoopRequest,
    end: Option<HttpEnd>,
}

/// How the app gets its request's body.
pub(crate) enum RequestBody {
    /// nginx read it whole first (memory, temp file): lent to the app's task, which may outlive
    /// the request when the server ends it first.
    Whole(Arc<BodyLease>),
    /// Handed over as it arrives (`wsgi_request_buffering off`).
    Streamed(Arc<BodyStream>),
}

/// What nginx answers in the app's place in the request's location.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswersInPlace {
    /// An `X-Accel-Redirect` (`wsgi_ignore_headers` does not name it).
    pub redirects: bool,
    /// The statuses of its `error_page`s (`wsgi_intercept_errors`).
    pub intercepted: InterceptedStatuses,
}

pub(crate) struct AsgiRequest {
    pub stream: Arc<Stream>,
    /// A body handed over as it arrives.
    pub body: Option<Arc<BodyStream>>,
    /// A body read whole, taken back before the server ends the request without the app.
    lent_body: Option<Arc<BodyLease>>,
    pub posted_at: Instant,
    /// The client went away (noticed by the request's read handler).
    gone: AtomicBool,
    ending: Mutex<Ending>,
    /// A response made from its head alone: a file (`http.response.pathsend`, kept until the
    /// request's pool goes: nginx sends from its descriptor) or an `X-Accel-Redirect`.
    pub whole_response: Mutex<Option<Outcome>>,
    answers: AnswersInPlace,
    on_end: OnEnd,
    /// Its place in the event loop's queue, and its task once started.
    pub watch: Arc<TaskWatch>,
    /// `wsgi_read_timeout` of the location (0: none), and its timer (event loop only).
    pub read_timeout: ngx_msec_t,
    pub deadline: UnsafeCell<ngx_event_t>,
    /// How a timeout's log entry begins: the request line and id (only with a timeout).
    pub label: String,
    /// Its response is an event stream, listed in [`crate::event_streams`].
    event_stream: AtomicBool,
    me: Weak<AsgiRequest>,
}

// SAFETY: `deadline` is only touched on the event loop; the rest is behind mutexes, atomic or
// immutable.
unsafe impl Sync for AsgiRequest {}
// SAFETY: as above.
unsafe impl Send for AsgiRequest {}

impl AsgiRequest {
    pub(crate) fn new(
        r: *mut ngx_http_request_t,
        stream: Arc<Stream>,
        body: RequestBody,
        on_end: OnEnd,
        read_timeout: ngx_msec_t,
        label: String,
        answers: AnswersInPlace,
    ) -> Arc<AsgiRequest> {
        let (body, lent_body) = match body {
            RequestBody::Whole(lease) => (None, Some(lease)),
            RequestBody::Streamed(stream) => (Some(stream), None),
        };
        Arc::new_cyclic(|me| AsgiRequest {
            stream,
            body,
            lent_body,
            posted_at: Instant::now(),
            gone: AtomicBool::new(false),
            ending: Mutex::new(Ending {
                request: LoopRequest(r),
                end: None,
            }),
            whole_response: Mutex::new(None),
            answers,
            on_end,
            watch: Arc::new(TaskWatch::default()),
            read_timeout,
            label,
            // SAFETY: an all-zero ngx_event_t is nginx's own initial state for an event.
            deadline: UnsafeCell::new(unsafe { std::mem::zeroed() }),
            event_stream: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    fn respond_whole(&self, head: ResponseHead, file: Option<FileRange>) {
        *self
            .whole_response
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Outcome {
            kind: OutcomeKind::Complete,
            head: Some(head),
            body: Chunk::from_vec(Vec::new()),
            streamed: false,
            length_known: true,
            file,
            gil_wait: std::time::Duration::ZERO,
        });
    }

    fn ending(&self) -> std::sync::MutexGuard<'_, Ending> {
        self.ending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server ends the request before the app's response did (its deadline, or its wait for
    /// the loop): takes the request, so that the app's own end is ignored. None when the
    /// response is already over.
    pub(crate) fn end_early(&self) -> Option<*mut ngx_http_request_t> {
        let r = self.take_request(HttpEnd::Failed)?;
        self.take_body_back();
        Some(r)
    }

    /// Takes the request from the app's side with `end` as its end; None when its end has
    /// been handled already.
    fn take_request(&self, end: HttpEnd) -> Option<*mut ngx_http_request_t> {
        let mut ending = self.ending();
        if ending.end.is_some() || ending.request.0.is_null() {
            return None;
        }
        ending.end = Some(end);
        Some(std::mem::replace(&mut ending.request, LoopRequest::none()).0)
    }

    /// Before the server ends the request while the app's task may still run: the body's
    /// buffers and temp file go with the request, and a read the task makes after this says
    /// http.disconnect instead of touching them.
    fn take_body_back(&self) {
        if let Some(lease) = &self.lent_body {
            lease.take_back();
        }
    }

    /// Lists this request's response as an event stream (its head says `text/event-stream`).
    fn track_event_stream(&self) {
        self.event_stream.store(true, Ordering::Release);
        let me: Weak<dyn EndsAtExit> = self.me.clone();
        event_streams::list(self as *const _ as usize, "asgi", me);
    }

    /// The client went away: the app is told (its waker fires through the stream).
    pub(crate) fn client_gone(&self) {
        self.gone.store(true, Ordering::Release);
        self.stream.client_gone();
    }
}

impl EndsAtExit for AsgiRequest {
    fn end_for_exit(&self) -> bool {
        let Some(r) = self.take_request(HttpEnd::Complete) else {
            return false;
        };
        // Before the app hears of it: its end (or the "client's") is nobody's news now.
        self.watch.mark_ended_by_server();
        self.take_body_back();
        // SAFETY: called on the event loop (the exiting check's timer); the request is live
        // until this, its completion. Its head promised keep-alive, but the client's
        // reconnection must not come on this connection, to the exiting worker.
        unsafe {
            (*(*r).main).set_keepalive(0);
            (self.on_end)(r, self, HttpEnd::Complete)
        };
        // After the end went out: from now on the app's send() raises, its receive() says
        // http.disconnect.
        self.client_gone();
        true
    }
}

impl Drop for AsgiRequest {
    fn drop(&mut self) {
        if self.event_stream.load(Ordering::Acquire) {
            event_streams::unlist(self as *const _ as usize);
        }
    }
}

impl HttpServer for AsgiRequest {
    fn room(&self) -> Result<bool, ClientGone> {
        self.stream.room()
    }

    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone> {
        let event_stream =
            self.stream.resumable() && head.as_ref().is_some_and(ResponseHead::is_event_stream);
        self.stream.push_now(head, data)?;
        // Once its head is with the stream: ended at exit, it goes out as a 200.
        if event_stream {
            self.track_event_stream();
        }
        Ok(())
    }

    fn push_head(&self, head: ResponseHead) -> Result<(), ClientGone> {
        let event_stream = self.stream.resumable() && head.is_event_stream();
        self.stream.push_head_now(head)?;
        if event_stream {
            self.track_event_stream();
        }
        Ok(())
    }

    fn read_body(&self, max: usize) -> BodyRead {
        match &self.body {
            Some(body) => body.try_read(max),
            None => BodyRead::End,
        }
    }

    fn send_file(&self, head: ResponseHead, file: FileRange) {
        self.respond_whole(head, Some(file));
    }

    fn answers_status(&self, status: u16) -> bool {
        self.answers.intercepted.contains(status)
    }

    fn answer_in_place(&self, head: ResponseHead) -> Result<(), ResponseHead> {
        if !self.answers.redirects && !head.answered_by_server {
            return Err(head);
        }
        // The completion answers it as it answers a WSGI app's (response::send).
        self.respond_whole(head, None);
        Ok(())
    }

    fn client_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire) || self.stream.is_cancelled()
    }

    fn all_sent(&self) -> bool {
        self.stream.all_sent()
    }

    fn finish(&self, end: HttpEnd) {
        {
            let mut ending = self.ending();
            if ending.end.is_some() {
                return;
            }
            ending.end = Some(end);
        }
        if let Some(me) = self.me.upgrade() {
            crate::notify::schedule(me);
        }
    }
}

impl Pump for AsgiRequest {
    unsafe fn pump(&self) {
        let (r, end) = {
            let mut ending = self.ending();
            let Some(end) = ending.end else { return };
            let r = std::mem::replace(&mut ending.request, LoopRequest::none()).0;
            (r, end)
        };
        if !r.is_null() {
            // SAFETY: on the event loop; the request is live until this, its completion.
            unsafe { (self.on_end)(r, self, end) };
        }
    }
}
