//! One WebSocket connection of an ASGI app: the `websocket.*` messages, checked against the spec.
//! The frames are the server's business (it runs a [`super::ws_codec::WsCodec`] over its
//! connection); here are the app's side of the handshake, its messages and their order.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::http::{BodyRead, HttpEnd, HttpExchange, HttpRequest, HttpServer};
use super::message_values::{byte_string, header_pair};
use super::scope::HttpScope;
use super::task_watch::TaskWatch;
use super::waker::Waker;
use super::ws_codec::{accept_key, check_close, WsIncoming, WsOutgoing};
use crate::chunk::Chunk;
use crate::file_wrapper::FileRange;
use crate::forked::Back;
use crate::response::{ClientDisconnected, ResponseHead};
use crate::sink::ClientGone;

/// The server's side of one WebSocket connection. Called on the event loop's thread; never
/// blocks (where there is no room or no message, the server fires the waker later).
pub trait WsServer: Send + Sync {
    /// The app accepted: answer 101 with `head`, then speak frames.
    fn accept(&self, head: ResponseHead);
    /// Whether a message may be queued now.
    fn room(&self) -> Result<bool, ClientGone>;
    fn send(&self, message: WsOutgoing) -> Result<(), ClientGone>;
    /// The next message from the client, if one came.
    fn next(&self) -> Option<WsIncoming>;
    /// Before the accept only: a plain HTTP response (a denial).
    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone>;
    /// Before the accept only: the denial's head alone, to leave now (see
    /// [`HttpServer::push_head`]).
    fn push_head(&self, head: ResponseHead) -> Result<(), ClientGone> {
        self.push(Some(head), Chunk::from_vec(Vec::new()))
    }
    /// Before the accept only: room for the denial's body.
    fn http_room(&self) -> Result<bool, ClientGone>;
    fn client_gone(&self) -> bool;
    /// The app is done with the connection (once).
    fn finish(&self, end: HttpEnd);
}

/// What the server submits for one WebSocket handshake.
pub struct WsRequest {
    pub app: usize,
    pub scope: Arc<HttpScope>,
    pub server: Arc<dyn WsServer>,
    pub waker: Arc<Waker>,
    /// Its place in the loop's queue, and its deadline until the app accepts or denies.
    pub watch: Arc<TaskWatch>,
}

/// The denial path (`websocket.http.response.*`, a 403, a 500) as a plain HTTP response.
struct Denial(Arc<dyn WsServer>);

impl HttpServer for Denial {
    fn room(&self) -> Result<bool, ClientGone> {
        self.0.http_room()
    }
    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone> {
        self.0.push(head, data)
    }
    fn push_head(&self, head: ResponseHead) -> Result<(), ClientGone> {
        self.0.push_head(head)
    }
    fn read_body(&self, _max: usize) -> BodyRead {
        BodyRead::End
    }
    fn send_file(&self, _head: ResponseHead, _file: FileRange) {}
    fn client_gone(&self) -> bool {
        self.0.client_gone()
    }
    fn finish(&self, end: HttpEnd) {
        self.0.finish(end)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No accept yet (whether or not the app has received `websocket.connect`: it may accept or
    /// close without reading it, as Starlette's router does for a path it has no route for).
    Connecting,
    /// A denial response is under way.
    Denying,
    Open,
    /// The app sent a close.
    Closing,
}

#[pyclass(module = "ngx_wsgi", name = "WebSocketExchange")]
pub struct WsExchange {
    server: Arc<dyn WsServer>,
    waker: Arc<Waker>,
    watch: Arc<TaskWatch>,
    key: Vec<u8>,
    state: State,
    /// `websocket.connect` went to the app (its first receive() gets it, whenever that is).
    connect_delivered: bool,
    /// The client's close (or its going away) went to the app, with this code and reason, told
    /// again if it asks again.
    disconnected: Option<(u16, String)>,
    finished: bool,
    /// `ended` ran: an abandoned task's coroutine, closed when it is collected, ends nothing.
    ended: bool,
    /// A `receive()` waits: the app listens for the client's close in a task beside those that
    /// send (Strawberry's and Ariadne's GraphQL subscriptions, Channels' groups). Once the
    /// client has closed, the other tasks' sends wait until the listening task is told, then
    /// raise, as uvicorn's wait for the connection's end: the listening task cancels the
    /// senders first. Raised at once, a subscription's send in the instant between the
    /// client's close frame and the listening task's wake-up failed with `ClientDisconnected`,
    /// which its framework logged as an error (Strawberry: "Exception in worker task", a third
    /// of the subscriptions its clients closed; none under uvicorn).
    listening: bool,
    /// The task that was told `websocket.disconnect` (its address; 0: none yet).
    told: usize,
    http: Py<HttpExchange>,
    scope: Arc<HttpScope>,
}

impl WsExchange {
    pub(crate) fn new(py: Python<'_>, req: WsRequest) -> PyResult<WsExchange> {
        let key = req
            .scope
            .header(b"sec-websocket-key")
            .unwrap_or_default()
            .to_vec();
        let http = Py::new(
            py,
            HttpExchange::new(HttpRequest {
                app: req.app,
                scope: req.scope.clone(),
                body: Some(Arc::new(crate::body_lease::BodyLease::new(
                    crate::body::Body::empty(),
                ))),
                server: Arc::new(Denial(req.server.clone())),
                waker: req.waker.clone(),
                // A task stopped at the handshake's deadline ends like an HTTP one.
                watch: req.watch.clone(),
            }),
        )?;
        Ok(WsExchange {
            server: req.server,
            waker: req.waker,
            watch: req.watch,
            key,
            state: State::Connecting,
            connect_delivered: false,
            disconnected: None,
            finished: false,
            ended: false,
            listening: false,
            told: 0,
            http,
            scope: req.scope,
        })
    }

    /// [`WsExchange::receive_now`]'s message: what the app is told next, if anything.
    fn next_message<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        if !self.connect_delivered {
            self.connect_delivered = true;
            let msg = PyDict::new(py);
            msg.set_item("type", "websocket.connect")?;
            return Ok(Some(msg));
        }
        if let Some((code, reason)) = &self.disconnected {
            return Self::disconnect(py, *code, reason).map(Some);
        }
        if self.finished && matches!(self.state, State::Connecting | State::Denying) {
            // The handshake was answered with a denial: the connection is over for the app
            // too (Channels' consumers, among others, wait for this to end).
            self.disconnected = Some((1006, String::new()));
            return Self::disconnect(py, 1006, "").map(Some);
        }
        if matches!(self.state, State::Open | State::Closing) {
            if let Some(incoming) = self.server.next() {
                if let WsIncoming::Closed { code, reason } = &incoming {
                    self.disconnected = Some((*code, reason.clone()));
                }
                return receive_message(py, incoming).map(Some);
            }
        }
        if self.server.client_gone() {
            self.disconnected = Some((1006, String::new()));
            return Self::disconnect(py, 1006, "").map(Some);
        }
        Ok(None)
    }

    fn finish(&mut self, end: HttpEnd) {
        if !self.finished {
            self.finished = true;
            self.server.finish(end);
        }
    }

    fn log_error(&self, what: &str, detail: &str) {
        let sep = if detail.is_empty() { "" } else { "\n" };
        tracing::error!(
            target: "asgi",
            "{what} while serving \"{}\", client: {}{}{sep}{detail}",
            self.scope.request_line().escape_debug(),
            self.scope.client_text(),
            self.scope.log_suffix(),
        );
    }

    fn disconnect<'py>(py: Python<'py>, code: u16, reason: &str) -> PyResult<Bound<'py, PyDict>> {
        let msg = PyDict::new(py);
        msg.set_item("type", "websocket.disconnect")?;
        msg.set_item("code", code)?;
        msg.set_item("reason", reason)?;
        Ok(msg)
    }

    /// An HTTP response instead of the connection (the denial extension, a 403, a 500).
    fn deny(&mut self, py: Python<'_>, message: &Bound<'_, PyAny>, kind: &str) -> PyResult<bool> {
        let copy = message.cast::<PyDict>()?.copy()?;
        copy.set_item("type", kind)?;
        let done = self
            .http
            .bind(py)
            .call_method1("send_now", (copy,))?
            .extract::<Option<bool>>()?
            // None: dropped, as the client is gone (nothing else for a denial).
            .unwrap_or(true);
        self.state = State::Denying;
        Ok(done)
    }

    fn accept(&mut self, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut head = ResponseHead::new(101, b"101 Switching Protocols", 4, 128);
        head.push_header(b"Upgrade", b"websocket");
        head.push_header(b"Sec-WebSocket-Accept", accept_key(&self.key).as_bytes());
        if let Ok(sub) = message.get_item("subprotocol") {
            if !sub.is_none() {
                let sub = sub.cast::<PyString>().map_err(|_| {
                    PyTypeError::new_err("websocket.accept: subprotocol must be a str")
                })?;
                let sub = sub.to_cow()?;
                // The client fails a connection whose subprotocol it did not offer (RFC 6455,
                // 4.1): better the app's error, with its traceback, than a client's mystery.
                if !self
                    .scope
                    .subprotocols
                    .iter()
                    .any(|offered| *offered == sub)
                {
                    return Err(PyValueError::new_err(format!(
                        "websocket.accept: subprotocol {sub:?} is not one the client offered \
                         (scope[\"subprotocols\"] is {:?})",
                        self.scope.subprotocols
                    )));
                }
                head.push_header(b"Sec-WebSocket-Protocol", sub.as_bytes());
            }
        }
        if let Ok(headers) = message.get_item("headers") {
            for item in headers.try_iter()? {
                let item = item?;
                let pair = header_pair(&item).map_err(|e| {
                    PyTypeError::new_err(format!("websocket.accept: {}", e.value(item.py())))
                })?;
                crate::response::check_header_bytes(&pair.0, &pair.1)
                    .map_err(PyValueError::new_err)?;
                if crate::response::is_connection_header(&pair.0)
                    || pair.0.eq_ignore_ascii_case(b"content-length")
                {
                    // The connection's framing fields are the server's (it answers the
                    // upgrade); a 101 has no body to measure (RFC 9110 8.6).
                    continue;
                }
                // The handshake's own (accept, subprotocol, extensions: only the server knows
                // which it speaks on the connection).
                if pair.0.len() >= 14 && pair.0[..14].eq_ignore_ascii_case(b"sec-websocket-") {
                    return Err(PyValueError::new_err(format!(
                        "websocket.accept: {} is the server's to set",
                        String::from_utf8_lossy(&pair.0)
                    )));
                }
                head.push_header(&pair.0, &pair.1);
            }
        }
        self.server.accept(head);
        self.state = State::Open;
        Ok(())
    }
}

/// What `receive()` gives the app for a message of the client's (or its close).
pub fn receive_message(py: Python<'_>, incoming: WsIncoming) -> PyResult<Bound<'_, PyDict>> {
    let msg = PyDict::new(py);
    match incoming {
        WsIncoming::Text(t) => {
            msg.set_item("type", "websocket.receive")?;
            msg.set_item("text", t)?;
        }
        WsIncoming::Binary(b) => {
            msg.set_item("type", "websocket.receive")?;
            msg.set_item("bytes", PyBytes::new(py, &b))?;
        }
        WsIncoming::Closed { code, reason } => return WsExchange::disconnect(py, code, &reason),
    }
    Ok(msg)
}

/// The frame an app's `websocket.send` or `websocket.close` (`kind`) asks for, checked.
pub fn app_message(kind: &str, message: &Bound<'_, PyAny>) -> PyResult<WsOutgoing> {
    let get = |k: &str| message.get_item(k).ok().filter(|v| !v.is_none());
    if kind == "websocket.close" {
        let code = match get("code") {
            Some(c) => c
                .extract::<i64>()
                .map_err(|_| PyTypeError::new_err("websocket.close: code must be an int"))?,
            None => 1000,
        };
        let reason = match get("reason") {
            // A str that is not UTF-8 (a lone surrogate) raises Python's UnicodeEncodeError.
            Some(r) => r
                .cast::<PyString>()
                .map_err(|_| PyTypeError::new_err("websocket.close: reason must be a str"))?
                .to_cow()?
                .into_owned(),
            None => String::new(),
        };
        let checked = u16::try_from(code)
            .map_err(|_| format!("close code {code} may not be sent"))
            .and_then(|code| check_close(code, &reason).map(|()| code));
        return match checked {
            Ok(code) => Ok(WsOutgoing::Close { code, reason }),
            Err(e) => Err(PyValueError::new_err(format!("websocket.close: {e}"))),
        };
    }
    match (get("bytes"), get("text")) {
        (Some(b), None) => Ok(WsOutgoing::Binary(
            byte_string(&b)
                .ok_or_else(|| PyTypeError::new_err("websocket.send: bytes must be bytes"))?
                .as_bytes()
                .to_vec(),
        )),
        (None, Some(t)) => Ok(WsOutgoing::Text(
            t.cast::<PyString>()
                .map_err(|_| PyTypeError::new_err("websocket.send: text must be a str"))?
                .to_cow()?
                .into_owned(),
        )),
        _ => Err(PyValueError::new_err(
            "websocket.send needs exactly one of bytes and text",
        )),
    }
}

#[pymethods]
impl WsExchange {
    fn receive_now<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        crate::forked::exit_if_forked_child(py, "asgi", Back::UsedTheRequest);
        let message = self.next_message(py)?;
        if message.is_some() {
            self.listening = false;
            if self.disconnected.is_some() && self.told == 0 {
                self.told = super::http::current_task(py);
                // The sends that wait for this news raise now, unless this task cancels them
                // first.
                self.waker.wake_parked();
            }
        }
        Ok(message)
    }

    /// A parked `receive()` was cancelled: nothing listens any more, and no send waits for it.
    fn stop_listening(&mut self) {
        self.listening = false;
        self.waker.wake_parked();
    }

    fn send_now(&mut self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<bool> {
        crate::server_log::routed(self.scope.log_route, || {
            crate::forked::exit_if_forked_child(py, "asgi", Back::UsedTheRequest);
            let kind = super::http::message_type(message)?;
            match (kind.as_str(), self.state) {
                ("websocket.accept", State::Connecting) => {
                    if self.disconnected.is_some() || self.server.client_gone() {
                        // A send on a closed connection, as any other.
                        self.disconnected = Some((1006, String::new()));
                        return Err(ClientDisconnected::new_err(
                            "the client closed the connection before websocket.accept",
                        ));
                    }
                    self.accept(message).map(|()| true)
                }
                ("websocket.close", State::Connecting) => {
                    // Closed before the accept: the handshake is answered 403.
                    self.deny(py, forbidden(py)?.as_any(), "http.response.start")?;
                    let body = PyDict::new(py);
                    self.deny(py, &body, "http.response.body")?;
                    self.finished = true;
                    // A receive() the app awaits meanwhile gets the disconnect.
                    self.waker.wake();
                    Ok(true)
                }
                ("websocket.http.response.start", State::Connecting) => {
                    self.deny(py, message, "http.response.start")
                }
                ("websocket.http.response.body", State::Denying) => {
                    let done = self.deny(py, message, "http.response.body")?;
                    let last = !message
                        .get_item("more_body")
                        .ok()
                        .is_some_and(|m| m.is_truthy().unwrap_or(false));
                    if done && last {
                        self.finished = true;
                        self.waker.wake();
                    }
                    Ok(done)
                }
                ("websocket.send", State::Open) | ("websocket.close", State::Open) => {
                    let outgoing = app_message(&kind, message)?;
                    let closing = matches!(outgoing, WsOutgoing::Close { .. });
                    let sent = match self.disconnected {
                        Some(_) => false,
                        None => match self.server.room() {
                            Ok(false) => return Ok(false),
                            Ok(true) => self.server.send(outgoing).is_ok(),
                            Err(_) => false,
                        },
                    };
                    // Once the client has closed, a message would be lost: its send says so. A close
                    // is what is under way already, and taken (as uvicorn takes it): an app's
                    // clean-up close that meets the client's own is no error.
                    if !sent && !closing {
                        if self.listening && super::http::current_task(py) != self.told {
                            // Awaits the listening task's news (see `listening`).
                            return Ok(false);
                        }
                        return Err(ClientDisconnected::new_err(
                            "the client closed the connection",
                        ));
                    }
                    if closing {
                        self.state = State::Closing;
                    }
                    Ok(true)
                }
                ("websocket.send", State::Closing) | ("websocket.close", State::Closing) => {
                    Err(ClientDisconnected::new_err(
                        "the connection is closing (websocket.close was sent)",
                    ))
                }
                (kind, state) => Err(PyRuntimeError::new_err(format!(
                    "unexpected ASGI message {kind:?} {}",
                    match state {
                        State::Connecting => "before websocket.accept",
                        State::Denying => "while a denial response is under way",
                        _ => "on an open WebSocket",
                    }
                ))),
            }
        })
    }

    fn park(&self, future: Py<PyAny>) {
        self.waker.park(future);
    }

    /// A `receive()` waits (see [`WsExchange::listening`]).
    fn park_receive(&mut self, future: Py<PyAny>) {
        self.listening = true;
        self.waker.park(future);
    }

    #[pyo3(signature = (error = None))]
    fn ended(&mut self, py: Python<'_>, error: Option<Bound<'_, PyAny>>) {
        crate::server_log::routed(self.scope.log_route, || {
            if std::mem::replace(&mut self.ended, true) {
                return;
            }
            crate::forked::exit_if_forked_task_ended(py, "asgi", error.as_ref());
            crate::chunk::release_dropped(py);
            match self.state {
                State::Connecting | State::Denying => {
                    let denied = if error.is_none() && self.state != State::Denying {
                        // Returned without accepting: 403 (the spec's answer).
                        forbidden(py)
                            .and_then(|start| self.deny(py, start.as_any(), "http.response.start"))
                            .and_then(|_| {
                                self.deny(py, PyDict::new(py).as_any(), "http.response.body")
                            })
                            .is_ok()
                    } else {
                        self.http.bind(py).call_method1("ended", (error,)).is_ok()
                    };
                    if !denied {
                        // The client went away meanwhile (or the denial could not be sent).
                        self.finished = false;
                        self.finish(if self.server.client_gone() {
                            HttpEnd::ClientGone
                        } else {
                            HttpEnd::Failed
                        });
                    }
                    self.finished = true;
                }
                State::Open | State::Closing => {
                    let code = match &error {
                        Some(e) => {
                            let err = PyErr::from_value(e.clone());
                            // The connection's end, reaching an app that sent before it read the
                            // disconnect (a client that broke the protocol, or went): not the
                            // app's fault. After its own close it is (it sent once more).
                            let gone = err.is_instance_of::<ClientDisconnected>(py)
                                && (self.disconnected.is_some() || self.state == State::Open);
                            // The server answered in its place (the handshake's deadline) before
                            // the task, cancelled, saw it.
                            let timed_out =
                                self.watch.timed_out() && HttpExchange::ends_a_timeout(py, &err);
                            if !gone
                                && !timed_out
                                && !super::task_watch::ended_by_exit(py, &self.scope, &err)
                                && !super::task_watch::ended_by_loop_death(py, &self.scope, &err)
                            {
                                self.log_error(
                                    "the application raised on an open WebSocket",
                                    &crate::traceback::format(py, &err),
                                );
                            }
                            1011
                        }
                        None => 1000,
                    };
                    if self.state == State::Open && self.disconnected.is_none() {
                        let _ = self.server.send(WsOutgoing::Close {
                            code,
                            reason: String::new(),
                        });
                    }
                    self.finish(HttpEnd::Complete);
                }
            }
        })
    }
}

/// The start of the 403 that answers a handshake the app closed, or returned from, before
/// accepting it: empty, with a length (not a chunked empty body), as other servers send it.
fn forbidden(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let start = PyDict::new(py);
    start.set_item("status", 403)?;
    start.set_item("headers", vec![(b"content-length".to_vec(), b"0".to_vec())])?;
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    fn message<'py>(py: Python<'py>, code: &str) -> Bound<'py, PyAny> {
        let code = std::ffi::CString::new(code).unwrap();
        py.eval(&code, None, None).unwrap()
    }

    #[test]
    fn a_close_reason_is_a_str_that_encodes_as_utf8() {
        with_python(|py| {
            let close = |text| app_message("websocket.close", &message(py, text));
            assert!(matches!(
                close("{'type': 'websocket.close', 'code': 4000, 'reason': 'bye'}"),
                Ok(WsOutgoing::Close { code: 4000, ref reason }) if reason == "bye"
            ));
            let err = close("{'type': 'websocket.close', 'reason': b'bye'}").unwrap_err();
            assert!(err.is_instance_of::<PyTypeError>(py), "{err}");
            // A str, but no UTF-8: Python's own error says which character.
            let err = close("{'type': 'websocket.close', 'reason': '\\udcff'}").unwrap_err();
            assert!(
                err.is_instance_of::<pyo3::exceptions::PyUnicodeEncodeError>(py),
                "{err}"
            );
        });
    }
}
