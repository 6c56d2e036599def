//! One HTTP request of an ASGI app: its `receive()` and `send()` messages, checked against the
//! spec and turned into what the server sends, without ever blocking the event loop.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::scope::HttpScope;
use super::task_watch::TaskWatch;
use super::waker::Waker;
use crate::body_lease::BodyLease;
use crate::chunk::Chunk;
use crate::file_wrapper::FileRange;
use crate::forked::Back;
use crate::response::{ClientDisconnected, ResponseHead};
use crate::sink::ClientGone;

mod extensions;
mod reason_phrase;
mod response_messages;

/// A piece of a request body the server delivers as it arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyRead {
    Data(Vec<u8>),
    /// The body's last bytes: the end came in with them (one message, not two).
    Last(Vec<u8>),
    /// Nothing yet: the server fires the waker when more arrives.
    Pending,
    End,
    /// The body failed (the client went away, a size limit, a timeout): why, and whether it
    /// was the client's doing (a broken chunk, over the size limit: nginx answers a 4xx).
    Failed {
        why: String,
        client: bool,
    },
}

/// How the app's response ended, for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpEnd {
    /// Every byte was handed over: end the message cleanly.
    Complete,
    /// Nothing was sent: answer 500.
    Failed,
    /// Part of the response went out: cut the connection.
    Truncated,
    /// The client went away.
    ClientGone,
}

/// The server's side of one request. Every method is called on the event loop's thread and
/// must not block; where the server has no room or no data, it fires the request's [`Waker`]
/// once it has.
pub trait HttpServer: Send + Sync {
    /// Whether a piece may be pushed now (false: wait for a wake-up).
    fn room(&self) -> Result<bool, ClientGone>;
    /// Hands over the head (with the first piece) and a piece of the body.
    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone>;
    /// Hands over the head alone, to leave now: an event stream's start, or a first body
    /// message that was empty with more to come (ASGI lets a head wait for the first body
    /// message, not for the first body byte).
    fn push_head(&self, head: ResponseHead) -> Result<(), ClientGone> {
        self.push(Some(head), Chunk::from_vec(Vec::new()))
    }
    /// The next piece of a body delivered as it arrives (never called for a buffered body).
    fn read_body(&self, max: usize) -> BodyRead;
    /// The whole response is `head` and this file (`http.response.pathsend`): the server sends
    /// the file itself. [`finish`](Self::finish) follows.
    fn send_file(&self, head: ResponseHead, file: FileRange);
    /// Whether the server answers responses of `status` itself (its error page), in the app's
    /// place (see [`crate::intercepted`]).
    fn answers_status(&self, _status: u16) -> bool {
        false
    }
    /// `head` carries an `X-Accel-Redirect`, or a status the server answers itself: the server
    /// answers from the redirect's target or its own page instead of the app's body, once
    /// [`finish`](Self::finish) says `Complete`. Gives the head back when the server does not
    /// act on it (then it is an ordinary response).
    fn answer_in_place(&self, head: ResponseHead) -> Result<(), ResponseHead> {
        Err(head)
    }
    fn client_gone(&self) -> bool;
    /// Every body byte pushed has left the server (none waits in its buffers). A server that
    /// cannot tell says no.
    fn all_sent(&self) -> bool {
        false
    }
    /// The response is over (called once). After it the server's request may be gone: nothing
    /// of it is touched again.
    fn finish(&self, end: HttpEnd);
}

/// What the server submits for one request.
pub struct HttpRequest {
    /// The index of the app in the process's apps.
    pub app: usize,
    /// Shared with the loop's start of the task (no copy of the request's bytes).
    pub scope: Arc<HttpScope>,
    /// The whole body, or None for one delivered as it arrives ([`HttpServer::read_body`]). The
    /// server takes it back if it ends the request before the app's task ends.
    pub body: Option<Arc<BodyLease>>,
    pub server: Arc<dyn HttpServer>,
    pub waker: Arc<Waker>,
    /// Its place in the loop's queue, and its deadline.
    pub watch: Arc<TaskWatch>,
}

/// How much of a body delivered as it arrives one `http.request` message carries at most.
const BODY_MESSAGE: usize = 256 * 1024;
/// A buffered body up to this size is one message; a larger one (nginx's temp file) comes in
/// messages of this size, read as the app asks, so that the app's memory is not the body's.
const BUFFERED_MESSAGE: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Response {
    /// No `http.response.start` yet.
    Idle,
    /// Started; the head waits to go with the first body piece.
    Started,
    /// Head and body pieces went to the server.
    Streaming,
    /// The server took the head to answer in the app's place (an `X-Accel-Redirect`, a status
    /// it answers itself): the app's body pieces are dropped.
    AnsweredByServer,
    /// `more_body` was false: complete.
    Done,
}

/// The connection object behind the app's `receive` and `send` (event loop thread only).
#[pyclass(module = "ngx_wsgi", name = "HttpExchange")]
pub struct HttpExchange {
    server: Arc<dyn HttpServer>,
    waker: Arc<Waker>,
    watch: Arc<TaskWatch>,
    scope: Arc<HttpScope>,
    body: Option<Arc<BodyLease>>,
    /// The body is streamed (delivered as it arrives).
    streamed_body: bool,
    /// The app has had the whole body (`more_body` false).
    body_done: bool,
    /// How much of a buffered body the app has had.
    body_pos: u64,
    response: Response,
    head: Option<ResponseHead>,
    /// The app's Content-Length, and the body bytes sent.
    declared: Option<u64>,
    produced: u64,
    /// HEAD, 204, 304: the server drops the body.
    bodiless: bool,
    /// When a bodiless response's head went out, and the bytes of its pieces dropped since
    /// (see [`BODILESS_QUIET`]).
    bodiless_since: Option<std::time::Instant>,
    bodiless_dropped: u64,
    /// The send just taken was dropped: the app awaits a turn of the loop before going on.
    dropped: bool,
    /// `finish` was called: the server's request may be gone.
    finished: bool,
    /// The client went away.
    gone: bool,
    /// The client itself went away (`gone` is also set by a failed body or the server's answer).
    left: bool,
    /// The request body failed through the client's fault (a broken chunk, over the size
    /// limit).
    body_failed: bool,
    /// `ended` ran: an abandoned task's coroutine, closed when it is collected, ends nothing.
    ended: bool,
    /// A `receive()` waits: the app listens for its client's going (Django, Starlette before
    /// ASGI 2.4, Litestar: a task beside the one that sends).
    listening: bool,
    /// Sends that return without sending (after a turn of the loop) instead of raising, once
    /// the client went while the app listened (see [`QUIET_SENDS`]).
    quiet_sends: u8,
    /// The task that was told http.disconnect (its address; 0: none yet). Its own sends are
    /// never quiet: it knows, and a send of its raises as it expects (but for a bodiless
    /// response's pieces, dropped for a while whoever sends them: see [`BODILESS_QUIET`]).
    told: usize,
}

/// The running task's address (0 outside one): compared, never dereferenced.
pub(crate) fn current_task(py: Python<'_>) -> usize {
    py.import(pyo3::intern!(py, "asyncio"))
        .and_then(|a| a.call_method0(pyo3::intern!(py, "current_task")))
        .map_or(0, |t| if t.is_none() { 0 } else { t.as_ptr() as usize })
}

/// How many sends of another task than the one told `http.disconnect`, once the client went
/// while a `receive()` waited, return quietly (each after a turn of the loop) instead of
/// raising `ClientDisconnected`, as uvicorn's do: the listening task hears of the disconnect
/// and cancels the sending one, whose clean-up then runs (Django's `response.close()` and
/// `request_finished`, a generator's `finally`). Raised at once, the error ended the sending
/// task first and the framework left through its error path, its clean-up skipped. An app
/// that goes on sending is stopped by the raise after these.
const QUIET_SENDS: u8 = 8;

/// For how long after a bodiless response's head (HEAD, 204, 304), and for how many of their
/// bytes, the app's body pieces with more to come are dropped quietly, each after a turn of the
/// loop, as uvicorn and Hypercorn drop them: a stream of a known end (a page, a small table's
/// CSV) runs to it, and an app that prints what its stream raised (Datasette) logs nothing.
/// Past either, a piece raises `ClientDisconnected`: an endless stream (an event stream's,
/// Starlette's `StreamingResponse` of a generator that never ends) stops, a large one costs no
/// more than a piece of itself, and a client sending HEADs cannot keep tasks running, on no
/// connection of theirs, for longer.
const BODILESS_QUIET: std::time::Duration = std::time::Duration::from_secs(5);
const BODILESS_QUIET_BYTES: u64 = 1 << 20;

impl HttpExchange {
    pub(crate) fn new(req: HttpRequest) -> HttpExchange {
        let bodiless = req.scope.method() == b"HEAD";
        HttpExchange {
            server: req.server,
            waker: req.waker,
            watch: req.watch,
            streamed_body: req.body.is_none(),
            body: req.body,
            scope: req.scope,
            body_done: false,
            body_pos: 0,
            response: Response::Idle,
            head: None,
            declared: None,
            produced: 0,
            bodiless,
            bodiless_since: None,
            bodiless_dropped: 0,
            dropped: false,
            finished: false,
            gone: false,
            left: false,
            listening: false,
            quiet_sends: 0,
            told: 0,
            body_failed: false,
            ended: false,
        }
    }

    /// Ends the request on the server's side (once), dropping everything that points into it.
    fn finish(&mut self, end: HttpEnd) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.left && self.listening {
            self.quiet_sends = QUIET_SENDS;
        }
        self.body = None;
        self.head = None;
        self.waker.watch(None);
        self.server.finish(end);
        // A receive() already waiting says http.disconnect now (Litestar's responses, and
        // Starlette's before ASGI 2.4, wait in one for the client to go while they send).
        self.waker.wake_parked();
    }

    /// A wake-up came: if the client went away, the server's request ends now, whatever the app
    /// is doing (its next `send` raises, its `receive` says `http.disconnect`).
    pub(crate) fn notice_client_gone(&mut self) {
        if self.watch.answered_by_server() {
            // The server answered (a timeout) and ended its side: the client is not gone. An
            // event stream the server ended at its exit is, for the app, as if it were.
            self.gone = true;
            self.left |= self.watch.ended_by_server();
            self.finish(HttpEnd::Failed);
            return;
        }
        if !self.finished && self.server.client_gone() {
            self.gone = true;
            self.left = true;
            if self.body_whole() {
                // It went having had all its Content-Length promised: the response is complete,
                // the app's closing message (more_body false) notwithstanding.
                self.finish(HttpEnd::Complete);
                return;
            }
            tracing::info!(
                target: "asgi",
                "the connection to the client ended (closed, reset or timed out): \"{}\"{}",
                self.scope.request_line().escape_debug(),
                self.scope.log_suffix()
            );
            self.finish(HttpEnd::ClientGone);
        }
    }

    /// The next `receive()` message (an `http.disconnect` once the client is gone or the
    /// request over), or None when the app must await a wake-up.
    fn next_message<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        if self.finished || self.gone {
            return Self::disconnect(py).map(Some);
        }
        if !self.body_done {
            if !self.streamed_body {
                let (total, pos) = (self.body.as_ref().map_or(0, |b| b.len()), self.body_pos);
                let len = (total - pos).min(BUFFERED_MESSAGE) as usize;
                let bytes = match &self.body {
                    Some(body) if len > 0 => {
                        match body.read(|b| crate::body_bytes::read_bytes(py, b, pos, len)) {
                            Some(bytes) => bytes?,
                            // The server ended the request (its deadline, its exit) and has
                            // its body back: the app hears that its request is over.
                            None => {
                                self.notice_client_gone();
                                return Self::disconnect(py).map(Some);
                            }
                        }
                    }
                    _ => PyBytes::new(py, b""),
                };
                self.body_pos += len as u64;
                let more = self.body_pos < total;
                if !more {
                    self.body_done = true;
                    self.body = None;
                }
                return Self::request(py, bytes, more).map(Some);
            }
            return match self.server.read_body(BODY_MESSAGE) {
                BodyRead::Data(data) => Self::request(py, PyBytes::new(py, &data), true).map(Some),
                BodyRead::Last(data) => {
                    self.body_done = true;
                    Self::request(py, PyBytes::new(py, &data), false).map(Some)
                }
                BodyRead::End => {
                    self.body_done = true;
                    Self::request(py, PyBytes::new(py, b""), false).map(Some)
                }
                BodyRead::Pending if self.server.client_gone() => {
                    self.notice_client_gone();
                    Self::disconnect(py).map(Some)
                }
                BodyRead::Pending => Ok(None),
                BodyRead::Failed { why, client } => {
                    tracing::info!(
                        target: "asgi",
                        "the request body failed ({why}): \"{}\"{}",
                        self.scope.request_line().escape_debug(),
                        self.scope.log_suffix()
                    );
                    self.gone = true;
                    self.body_failed = client;
                    Self::disconnect(py).map(Some)
                }
            };
        }
        if self.server.client_gone() {
            self.notice_client_gone();
            return Self::disconnect(py).map(Some);
        }
        Ok(None)
    }

    /// Takes one `send()` message; false when the app must await a wake-up and send it again.
    fn take(&mut self, message: &Bound<'_, PyAny>) -> PyResult<bool> {
        crate::forked::exit_if_forked_child(message.py(), "asgi", Back::UsedTheRequest);
        if self.ended && !self.gone && self.response != Response::Done {
            // A task the app left behind: the server ended the response when the app's task
            // ended (returned, raised, or was cancelled at a deadline or the worker's exit), and
            // the client may well be there still.
            let kind = message_type(message)?;
            return Err(PyRuntimeError::new_err(format!(
                "{kind} sent after the app's task ended without completing its response (the \
                 server has ended it)"
            )));
        }
        // Once the client is gone every send says so, whatever it is (an app that handles the
        // disconnect by starting an error response gets the same, not a protocol error), but
        // where the response was whole already: a HEAD's head went out, its Content-Length's
        // bytes did, the server answered in the app's place, or it was complete.
        if self.left
            && self.response != Response::Done
            && self.response != Response::AnsweredByServer
            && !(self.bodiless && self.response == Response::Streaming)
            && !self.body_whole()
        {
            return Err(Self::gone_error());
        }
        let kind = message_type(message)?;
        if self.left && kind == "http.response.start" && self.response != Response::Idle {
            // An app that handles the disconnect (a HEAD's client gone once it had the head) by
            // starting an error response: the same answer as any other send, not a protocol
            // error in the error log.
            return Err(Self::gone_error());
        }
        match kind.as_str() {
            "http.response.start" => self.start(message).map(|()| true),
            "http.response.body" => self.body_piece(message),
            "http.response.pathsend" => self.pathsend(message).map(|()| true),
            "http.response.trailers" => self.trailers(message).map(|()| true),
            other => Err(PyValueError::new_err(format!(
                "unexpected ASGI message type {other:?} in an http scope"
            ))),
        }
    }

    /// Every byte of the app's Content-Length went to the server, and from it to the client:
    /// only the closing message (more_body false) is still to come.
    fn body_whole(&self) -> bool {
        self.response == Response::Streaming
            && !self.bodiless
            && self.declared == Some(self.produced)
            && self.server.all_sent()
    }

    fn log_error(&self, what: &str, detail: &str) {
        tracing::error!(target: "asgi", "{}", self.log_line(what, detail));
    }

    fn log_line(&self, what: &str, detail: &str) -> String {
        let sep = if detail.is_empty() { "" } else { "\n" };
        format!(
            "{what} while serving \"{}\", client: {}{}{sep}{detail}",
            self.scope.request_line().escape_debug(),
            self.scope.client_text(),
            self.scope.log_suffix(),
        )
    }

    fn disconnect<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let msg = PyDict::new(py);
        msg.set_item(
            pyo3::intern!(py, "type"),
            pyo3::intern!(py, "http.disconnect"),
        )?;
        Ok(msg)
    }

    fn request<'py>(
        py: Python<'py>,
        body: Bound<'py, PyBytes>,
        more: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let msg = PyDict::new(py);
        msg.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "http.request"))?;
        msg.set_item(pyo3::intern!(py, "body"), body)?;
        msg.set_item(pyo3::intern!(py, "more_body"), more)?;
        Ok(msg)
    }

    /// What a task stopped at its deadline raises: the cancellation, the watchdog's
    /// `TimeoutError` (or `TimeoutExit`), or `send()`'s refusal once the server answered in
    /// its place.
    pub(crate) fn ends_a_timeout(py: Python<'_>, err: &PyErr) -> bool {
        err.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py)
            || crate::timeout_exit::from_the_deadline(py, err)
            || err.is_instance_of::<ClientDisconnected>(py)
    }

    fn gone_error() -> PyErr {
        ClientDisconnected::new_err("the client closed the connection")
    }

    /// The server says the client is gone: noted (so that every later send says so too), and
    /// the error for the app.
    fn client_went(&mut self) -> PyErr {
        self.notice_client_gone();
        Self::gone_error()
    }
}

/// The `type` of an ASGI message.
pub(crate) fn message_type(message: &Bound<'_, PyAny>) -> PyResult<String> {
    let kind = message
        .get_item(pyo3::intern!(message.py(), "type"))
        .map_err(|_| {
            PyValueError::new_err(format!("an ASGI message needs a \"type\": {message:?}"))
        })?;
    let kind = kind
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("the message type must be str: {message:?}")))?;
    Ok(kind.to_cow()?.into_owned())
}

/// `message[key]`, None when it has no such key. Messages are dicts, read without raising (a
/// missing optional key would cost a KeyError each time); another mapping through `[]`.
fn get_opt<'py>(
    message: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Ok(dict) = message.cast::<PyDict>() {
        return dict.get_item(key);
    }
    match message.get_item(key) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(message.py()) => Ok(None),
        Err(e) => Err(e),
    }
}

#[pymethods]
impl HttpExchange {
    /// The next `receive()` message, or None when the app must await a wake-up.
    fn receive_now<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        crate::forked::exit_if_forked_child(py, "asgi", Back::UsedTheRequest);
        crate::server_log::routed(self.scope.log_route, || {
            // Still listening while it looks: a disconnect it finds now ends the request with
            // the quiet sends its listening asks for.
            let message = self.next_message(py)?;
            if message.is_some() {
                self.listening = false;
                if (self.gone || self.finished) && self.told == 0 {
                    // An http.disconnect: its task's own later sends raise (see QUIET_SENDS).
                    self.told = current_task(py);
                }
            }
            Ok(message)
        })
    }

    /// A parked `receive()` was cancelled (a timeout around it, its task cancelled): nothing
    /// listens any more.
    fn stop_listening(&mut self) {
        self.listening = false;
    }

    /// Takes one `send()` message: true; false when the app must await a wake-up and send it
    /// again; None when it is dropped quietly (see [`QUIET_SENDS`]), the app to await a turn of
    /// the loop.
    fn send_now(&mut self, message: &Bound<'_, PyAny>) -> PyResult<Option<bool>> {
        let py = message.py();
        match crate::server_log::routed(self.scope.log_route, || self.take(message)) {
            Ok(true) if std::mem::take(&mut self.dropped) => Ok(None),
            Err(e)
                if self.quiet_sends > 0
                    && e.is_instance_of::<ClientDisconnected>(py)
                    && current_task(py) != self.told =>
            {
                self.quiet_sends -= 1;
                Ok(None)
            }
            taken => taken.map(Some),
        }
    }

    /// Parks the future of a `receive()` that waits (see [`HttpExchange::listening`]).
    fn park_receive(&mut self, future: Py<PyAny>) {
        self.listening = true;
        self.waker.park(future);
    }

    /// Parks `future` until the server's next wake-up.
    fn park(&self, future: Py<PyAny>) {
        self.waker.park(future);
    }

    /// The app's coroutine ended, with `error` if it raised.
    #[pyo3(signature = (error = None))]
    fn ended(&mut self, py: Python<'_>, error: Option<Bound<'_, PyAny>>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        crate::server_log::routed(self.scope.log_route, || self.end(py, error));
    }
}

impl HttpExchange {
    /// [`HttpExchange::ended`]'s work, its log entries routed to the request's log.
    fn end(&mut self, py: Python<'_>, error: Option<Bound<'_, PyAny>>) {
        crate::forked::exit_if_forked_task_ended(py, "asgi", error.as_ref());
        crate::chunk::release_dropped(py);
        // A server's timeout cancels the stream too: that is not the client going.
        let gone_now = !self.finished
            && (self.watch.ended_by_server()
                || (!self.watch.answered_by_server() && self.server.client_gone()));
        // Kept: what a task the app left behind is told when it sends.
        self.gone |= gone_now;
        self.left |= gone_now;
        let (client_gone, client_left) = (self.gone, self.left);
        if let Some(error) = error {
            let err = PyErr::from_value(error);
            if self.watch.timed_out() && Self::ends_a_timeout(py, &err) {
                tracing::info!(
                    target: "asgi",
                    "the task of \"{}\" ended after its deadline ({}){}",
                    self.scope.request_line().escape_debug(),
                    err.get_type(py).name().map_or_else(|_| "?".into(), |n| n.to_string()),
                    self.scope.log_suffix()
                );
                self.finish(HttpEnd::Failed);
                return;
            }
            if client_gone && err.is_instance_of::<ClientDisconnected>(py) {
                self.gone = true;
                self.finish(HttpEnd::ClientGone);
                return;
            }
            // What the app raised once its client left or broke its body is most likely its
            // handling of that: the client's doing, logged at info as nginx logs client errors.
            let (what, clients_doing) = if self.response == Response::Done {
                (
                    "the application raised after its response was complete",
                    false,
                )
            } else if client_left {
                ("the application raised after the client went away", true)
            } else if self.body_failed {
                ("the request body failed, and the application raised", true)
            } else {
                ("the application raised", false)
            };
            if !super::task_watch::ended_by_exit(py, &self.scope, &err)
                && !super::task_watch::ended_by_loop_death(py, &self.scope, &err)
            {
                let traceback = crate::traceback::format(py, &err);
                if clients_doing {
                    tracing::info!(target: "asgi", "{}", self.log_line(what, &traceback));
                } else {
                    self.log_error(what, &traceback);
                }
            }
            let end = match self.response {
                // A redirect is answered only once its response is complete.
                Response::Idle | Response::Started | Response::AnsweredByServer => HttpEnd::Failed,
                _ => HttpEnd::Truncated,
            };
            self.finish(if client_gone {
                HttpEnd::ClientGone
            } else {
                end
            });
            return;
        }
        if self.finished {
            return;
        }
        if client_gone {
            self.finish(HttpEnd::ClientGone);
            return;
        }
        // A head the server answers, with no body message yet: the response it promised is
        // incomplete.
        self.take_server_answer();
        match self.response {
            Response::Idle => {
                // A middleware that knows only http.response.body (Gradio's Brotli one) drops
                // a file response's start and pathsend both.
                let hint = if self.scope.no_pathsend {
                    ""
                } else {
                    " (if a middleware of the app drops http.response.pathsend messages, \
                     `asgi_pathsend off;` stops offering them)"
                };
                self.log_error(
                    &format!("the application returned without sending http.response.start{hint}"),
                    "",
                );
                self.finish(HttpEnd::Failed);
            }
            Response::AnsweredByServer => {
                self.log_error(
                    "the application returned before its response was complete (more_body)",
                    "",
                );
                self.finish(HttpEnd::Failed);
            }
            // The head waits for the first body message: nothing went out, and the client
            // gets a 500, as when the app raises there (uvicorn has sent its head: it cuts).
            Response::Started if self.head.is_some() => {
                self.log_error(
                    "the application returned after http.response.start without sending \
                     http.response.body",
                    "",
                );
                self.finish(HttpEnd::Failed);
            }
            Response::Started | Response::Streaming => {
                self.log_error(
                    "the application returned before its response was complete (more_body)",
                    "",
                );
                self.finish(HttpEnd::Truncated);
            }
            Response::Done => self.finish(HttpEnd::Complete),
        }
    }
}

#[cfg(test)]
mod tests;
