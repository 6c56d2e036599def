//! The app's response messages: `http.response.start` and `http.response.body` checked against
//! the spec and handed to the server, the head with the first piece (or alone), the body held
//! to its `Content-Length`.

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::reason_phrase::reason_phrase;
use super::{get_opt, HttpEnd, HttpExchange, Response, BODILESS_QUIET, BODILESS_QUIET_BYTES};
use crate::asgi::message_values::{byte_string, header_pair};
use crate::chunk::Chunk;
use crate::response::{ClientDisconnected, ResponseHead};

impl HttpExchange {
    /// The head goes out now, before any body byte (see [`crate::asgi::http::HttpServer::push_head`]).
    pub(super) fn send_head_alone(&mut self, head: ResponseHead) -> PyResult<()> {
        self.server
            .push_head(head)
            .map_err(|_| self.client_went())?;
        self.response = Response::Streaming;
        self.end_if_bodiless();
        Ok(())
    }

    /// A response without a body (HEAD, 204, 304) is whole once its head went out: the server
    /// ends it then, so that the connection's next request waits for nothing, and the app is
    /// told as if its client had gone (its receive() says http.disconnect; its pieces with more
    /// to come are dropped for a while, then raise: see [`BODILESS_QUIET`]). An endless event
    /// stream asked for with HEAD ran for ever, and held its connection.
    pub(super) fn end_if_bodiless(&mut self) {
        if self.bodiless && self.response == Response::Streaming && !self.finished {
            self.gone = true;
            self.left = true;
            self.bodiless_since = Some(std::time::Instant::now());
            self.finish(HttpEnd::Complete);
        }
    }

    pub(super) fn start(&mut self, message: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.response {
            Response::Idle => {}
            _ => {
                return Err(PyRuntimeError::new_err(
                    "http.response.start sent a second time",
                ))
            }
        }
        let status = message
            .get_item(pyo3::intern!(message.py(), "status"))
            .map_err(|_| PyValueError::new_err("http.response.start without a status"))?;
        if status.is_instance_of::<pyo3::types::PyBool>() {
            return Err(PyTypeError::new_err("status must be an int, not bool"));
        }
        let status: i64 = status.extract().map_err(|_| {
            if status.is_instance_of::<pyo3::types::PyInt>() {
                // Not printed: a huge int may be beyond what Python converts to a str.
                return PyValueError::new_err(
                    "status out of range: an HTTP response status is 200 to 999",
                );
            }
            PyTypeError::new_err(format!(
                "status must be an int, not {}",
                crate::response::type_name(&status)
            ))
        })?;
        if !(200..=999).contains(&status) {
            return Err(PyValueError::new_err(format!(
                "status {status}: an HTTP response status is 200 to 999 (1xx are not responses)"
            )));
        }
        let status = status as u16;
        let reason = reason_phrase(status);
        let line = format!("{status} {reason}");
        let headers = get_opt(message, pyo3::intern!(message.py(), "headers"))?;
        let mut head = ResponseHead::new(status, line.as_bytes(), 8, 256);
        head.answered_by_server = self.server.answers_status(status);
        if let Some(headers) = headers {
            for item in headers.try_iter()? {
                let item = item?;
                let (name, value) = header_pair(&item)?;
                let (name, value) = (name.as_slice(), value.as_slice());
                crate::response::check_header_bytes(name, value).map_err(PyValueError::new_err)?;
                if crate::response::is_connection_header(name) {
                    // The connection's (sse-starlette sends `connection: keep-alive`, Gradio
                    // echoes the request's): nginx manages it, and drops it from an upstream's
                    // response as it is dropped here.
                    continue;
                }
                if name.eq_ignore_ascii_case(b"content-length") {
                    let length = std::str::from_utf8(value)
                        .ok()
                        .filter(|t| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
                        .and_then(|t| t.parse::<u64>().ok())
                        .ok_or_else(|| {
                            PyValueError::new_err(format!(
                                "content-length {:?} is not a number",
                                String::from_utf8_lossy(value)
                            ))
                        })?;
                    if head.content_length.is_some_and(|l| l != length) {
                        return Err(PyValueError::new_err(
                            "two different content-length headers",
                        ));
                    }
                    head.content_length = Some(length);
                    continue;
                }
                head.push_header(name, value);
            }
        }
        self.declared = head.content_length;
        self.bodiless |= head.is_bodiless();
        // Cheapest first: most responses have a length, and this runs for every response.
        if head.content_length.is_none()
            && !self.gone
            && !self.finished
            && head.is_event_stream()
            && !head.body_unused()
        {
            // Its client learns of the stream now, as from uvicorn, not at the first event
            // (sse-starlette's first ping is 15 s away; a client's read timeout may come first).
            // One with a length is a file of events (it may come by pathsend): held as any.
            // A client gone meanwhile (a body over a limit) still gets nginx's own answer.
            return self.send_head_alone(head);
        }
        self.head = Some(head);
        self.response = Response::Started;
        Ok(())
    }

    /// Takes an `http.response.body`; false when the server has no room yet (nothing taken:
    /// the app awaits a wake-up and sends it again).
    pub(super) fn body_piece(&mut self, message: &Bound<'_, PyAny>) -> PyResult<bool> {
        match self.response {
            Response::Idle => {
                return Err(PyRuntimeError::new_err(
                    "http.response.body sent before http.response.start",
                ))
            }
            Response::Done => {
                return Err(PyRuntimeError::new_err(
                    "http.response.body sent after the response was complete",
                ))
            }
            _ => {}
        }
        let body = get_opt(message, pyo3::intern!(message.py(), "body"))?;
        let more = match get_opt(message, pyo3::intern!(message.py(), "more_body"))? {
            Some(m) => m.is_truthy()?,
            None => false,
        };
        let body = match &body {
            Some(b) => Some(byte_string(b).ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "http.response.body: body must be bytes, not {}",
                    crate::response::type_name(b)
                ))
            })?),
            None => None,
        };
        let len = body.as_ref().map_or(0, |b| b.as_bytes().len());
        let answered = self.response == Response::AnsweredByServer;
        if answered || (self.bodiless && self.response == Response::Streaming) {
            // A HEAD's (204's, 304's) head went out and the server ended the response with it
            // (`end_if_bodiless`), or the server answered in the app's place. Its last piece is
            // taken; one with more to come is dropped for a while, then raises, or an endless
            // stream (Starlette's StreamingResponse stops only when send() raises) would run
            // for ever.
            if more {
                self.bodiless_dropped += len as u64;
                if self.bodiless_dropped <= BODILESS_QUIET_BYTES
                    && self
                        .bodiless_since
                        .is_some_and(|since| since.elapsed() < BODILESS_QUIET)
                {
                    self.dropped = true;
                    return Ok(true);
                }
                return Err(ClientDisconnected::new_err(if answered {
                    "the server answered in the application's place (X-Accel-Redirect, or its \
                     error page for the status): the body is not sent"
                } else {
                    "the response has no body (HEAD, 204 or 304): the server ended it with its head"
                }));
            }
            self.response = Response::Done;
            return Ok(true);
        }
        if self.declared == Some(self.produced)
            && !self.gone
            && !self.finished
            && self.server.client_gone()
        {
            // The client went, having had the whole Content-Length, before the wake-up that
            // says so: noted now, so that the closing message is taken, not refused by the
            // server's room (Starlette's middleware sends it after a few turns of the loop).
            self.notice_client_gone();
        }
        if self.gone || self.finished {
            if self.body_whole() && len == 0 {
                // The closing message of a response its client had whole: taken.
                if !more {
                    self.response = Response::Done;
                }
                return Ok(true);
            }
            return Err(Self::gone_error());
        }
        if self.take_server_answer() {
            // The body that comes with a redirect or an intercepted error is not the response
            // (nginx's upstreams drop it too, and answer at the head): answered now, the rest
            // dropped as a bodiless response's is, and the app told its client went.
            if more {
                self.gone = true;
                self.left = true;
                self.bodiless_since = Some(std::time::Instant::now());
            } else {
                self.response = Response::Done;
            }
            self.finish(HttpEnd::Complete);
            return Ok(true);
        }
        if let Some(declared) = self.declared {
            if self.produced + len as u64 > declared && !self.bodiless {
                return Err(PyRuntimeError::new_err(format!(
                    "the response body is longer than its content-length ({declared})"
                )));
            }
        }
        if len == 0 && more {
            if self.head.is_some() {
                if !self.server.room().map_err(|_| self.client_went())? {
                    return Ok(false);
                }
                if let Some(head) = self.head.take() {
                    self.send_head_alone(head)?;
                }
            }
            return Ok(true);
        }
        if !self.server.room().map_err(|_| self.client_went())? {
            return Ok(false);
        }
        let data = match body {
            Some(b) if len > 0 && !self.bodiless => Chunk::from_bytes(&b, len),
            _ => Chunk::from_vec(Vec::new()),
        };
        self.produced += len as u64;
        self.server
            .push(self.head.take(), data)
            .map_err(|_| self.client_went())?;
        self.response = Response::Streaming;
        if more {
            self.end_if_bodiless();
        } else {
            self.response = Response::Done;
            let end = match self.declared {
                Some(declared) if self.produced < declared && !self.bodiless => {
                    self.log_error(
                        &format!(
                            "the application sent {} bytes for a content-length of {declared}; the connection was cut",
                            self.produced
                        ),
                        "",
                    );
                    HttpEnd::Truncated
                }
                _ => HttpEnd::Complete,
            };
            self.finish(end);
        }
        Ok(true)
    }
}
