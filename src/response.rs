//! `start_response` and `write()`: what the app declares and writes, held back or streamed to the
//! server. The head itself and its validation are in [`crate::head`].

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use std::sync::Arc;

use pyo3::types::PyBytes;

use crate::accel::AccelHeaders;
use crate::chunk::Chunk;
pub(crate) use crate::head::type_name;
pub use crate::head::{
    check_header_bytes, head_from_python, is_connection_header, parse_header, parse_status,
    split_charset, ResponseHead,
};
use crate::intercepted::InterceptedStatuses;
use crate::sink::{ChunkSink, ClientGone};

pyo3::create_exception!(
    ngx_wsgi,
    ClientDisconnected,
    pyo3::exceptions::PyOSError,
    "The client closed the connection; nothing more can be sent."
);

/// Body bytes held back until the app is done: none, the app's one `bytes` object (lent, when
/// large), or copies of its pieces.
#[derive(Default)]
pub(crate) enum Held {
    #[default]
    Empty,
    Lent(Chunk),
    Copied(Vec<u8>),
}

impl Held {
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Held::Empty)
    }

    /// Holds the first `len` bytes of `bytes` after what is held; `declared` is the app's
    /// Content-Length (room to reserve).
    fn push(&mut self, bytes: &Bound<'_, PyBytes>, len: usize, declared: Option<u64>) {
        let data = &bytes.as_bytes()[..len];
        match self {
            Held::Empty if len >= crate::chunk::LEND_AT => {
                *self = Held::Lent(Chunk::from_bytes(bytes, len));
            }
            Held::Empty => {
                let room = declared.map_or(len, |n| n.min(16 << 20) as usize).max(len);
                let mut copy = Vec::with_capacity(room);
                copy.extend_from_slice(data);
                *self = Held::Copied(copy);
            }
            Held::Lent(first) => {
                let mut copy = Vec::with_capacity(first.len() + len);
                copy.extend_from_slice(first);
                copy.extend_from_slice(data);
                *self = Held::Copied(copy);
            }
            Held::Copied(copy) => copy.extend_from_slice(data),
        }
    }

    /// What is held, as one piece; leaves nothing held.
    pub(crate) fn take(&mut self) -> Chunk {
        match std::mem::take(self) {
            Held::Empty => Chunk::from_vec(Vec::new()),
            Held::Lent(chunk) => chunk,
            Held::Copied(copy) => Chunk::from_vec(copy),
        }
    }
}

/// The `start_response` callable of one request; also collects (or streams) the response body.
#[pyclass(module = "ngx_wsgi", name = "StartResponse")]
#[derive(Default)]
pub struct StartResponse {
    pub(crate) head: Option<ResponseHead>,
    /// Whether body bytes were produced: from then on the head is on its way to the client.
    pub(crate) committed: bool,
    /// Body bytes held back (a list body is sent in one piece when the app is done).
    pub(crate) body: Held,
    /// Body bytes the app produced, within its Content-Length.
    pub(crate) produced: u64,
    /// Where streamed pieces go, when the server streams.
    pub(crate) sink: Option<Arc<dyn ChunkSink>>,
    /// Pieces go to the sink as they are produced (a non-list iterable, or `write()`).
    pub(crate) streaming: bool,
    /// Pieces went to the sink: the server has the head and part of the body already.
    pub(crate) streamed: bool,
    pub(crate) client_gone: bool,
    /// The app produced more than its Content-Length; the excess was dropped.
    pub(crate) excess: u64,
    /// The request is over: calls from a stray reference must not touch it.
    pub(crate) finished: bool,
    /// The request is ending (set without the object, which another thread's `write()` may
    /// hold): `write()` and `start_response` refuse from then on.
    pub(crate) ending: Arc<std::sync::atomic::AtomicBool>,
    /// The `X-Accel-*` headers the server is configured to ignore.
    ignored: AccelHeaders,
    /// The statuses the server answers itself.
    intercepted: InterceptedStatuses,
    /// The request is a HEAD: whatever the app yields, nothing of it reaches the client.
    head_request: bool,
}

impl StartResponse {
    pub(crate) fn new(
        sink: Option<Arc<dyn ChunkSink>>,
        ignored: AccelHeaders,
        intercepted: InterceptedStatuses,
        head_request: bool,
    ) -> Self {
        StartResponse {
            sink,
            ignored,
            intercepted,
            head_request,
            ..Default::default()
        }
    }

    /// From now on, pieces go to the server as they are produced (if it streams); what was held
    /// back goes first.
    pub(crate) fn start_streaming(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.streaming || self.sink.is_none() {
            return Ok(());
        }
        self.streaming = true;
        if !self.body.is_empty() {
            let held = self.body.take();
            self.send(py, held)?;
        } else {
            self.announce_head();
        }
        Ok(())
    }

    /// Tells a streaming server the head while no body byte has gone (see
    /// [`ChunkSink::head_known`]).
    fn announce_head(&self) {
        if let (true, false, Some(sink), Some(head)) =
            (self.streaming, self.streamed, &self.sink, &self.head)
        {
            sink.head_known(head);
        }
    }

    /// Appends body bytes produced by the app (by iteration or `write()`).
    pub(crate) fn push_body(&mut self, bytes: &Bound<'_, PyBytes>) -> PyResult<()> {
        let py = bytes.py();
        let data = bytes.as_bytes();
        if data.is_empty() {
            return Ok(());
        }
        if self.client_gone {
            return Err(ClientDisconnected::new_err(
                "the client closed the connection",
            ));
        }
        let Some(head) = self.head.as_ref() else {
            return Err(PyRuntimeError::new_err(
                "the application produced body data before calling start_response()",
            ));
        };
        // PEP 3333: never send more than the app's Content-Length.
        let data = match head.content_length {
            Some(declared) => {
                let room = declared.saturating_sub(self.produced);
                let take = (data.len() as u64).min(room) as usize;
                self.excess += (data.len() - take) as u64;
                &data[..take]
            }
            None => data,
        };
        if data.is_empty() || head.body_unused() {
            return Ok(());
        }
        self.committed = true;
        self.produced += data.len() as u64;
        if self.streaming {
            self.send(py, Chunk::from_bytes(bytes, data.len()))
        } else {
            self.body.push(bytes, data.len(), head.content_length);
            Ok(())
        }
    }

    fn send(&mut self, py: Python<'_>, data: Chunk) -> PyResult<()> {
        // Pieces the server has sent since the last one: a long stream keeps no more of them
        // than its bound.
        crate::chunk::release_dropped(py);
        let head = if self.streamed {
            None
        } else {
            self.head.clone()
        };
        let Some(sink) = self.sink.clone() else {
            return Ok(());
        };
        self.streamed = true;
        match py.detach(move || sink.push(head, data)) {
            Ok(()) => Ok(()),
            Err(ClientGone) => {
                self.client_gone = true;
                Err(ClientDisconnected::new_err(
                    "the client closed the connection",
                ))
            }
        }
    }

    /// Whether the app has produced all of its body that can reach the client, so that the
    /// server stops iterating: all its `Content-Length` said (PEP 3333), or, for a response that
    /// has no body (a HEAD's, a 204, a 304), its first byte, which sends the head. An endless
    /// stream asked for with HEAD would otherwise hold its thread, and its connection's next
    /// request, for ever. Nor does any of a body the server answers in place of (an
    /// `X-Accel-Redirect`, an intercepted error status).
    pub(crate) fn has_whole_body(&self) -> bool {
        let Some(head) = self.head.as_ref() else {
            return false;
        };
        if head.body_unused() {
            return true;
        }
        if self.committed && (self.head_request || head.is_bodiless()) {
            return true;
        }
        head.content_length
            .is_some_and(|declared| self.produced >= declared)
    }

    /// The response's state, for this thread: a thread of the app's may be inside `write()`
    /// with it (its data waiting for the client, the GIL released), and a response has one
    /// writer at a time.
    pub(crate) fn in_use<'py>(slf: &Bound<'py, Self>) -> PyResult<PyRefMut<'py, Self>> {
        slf.try_borrow_mut().map_err(|_| {
            PyRuntimeError::new_err(
                "the response is being written by another thread (write() from a thread of the \
                 app's while the response is under way): a response has one writer at a time",
            )
        })
    }

    fn check_live(&self) -> PyResult<()> {
        if self.finished || self.ending.load(std::sync::atomic::Ordering::Acquire) {
            return Err(PyRuntimeError::new_err(
                "start_response/write used after the response ended",
            ));
        }
        Ok(())
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        {
            let mut this = Self::in_use(slf)?;
            this.check_live()?;
            match exc_info.filter(|e| !e.is_none()) {
                // PEP 3333: too late to change the head; re-raise the app's exception.
                Some(exc_info) if this.committed => {
                    let err = PyErr::from_value(exc_info.get_item(1)?);
                    if let Ok(tb) = exc_info.get_item(2) {
                        if let Ok(tb) = tb.cast_into::<pyo3::types::PyTraceback>() {
                            err.set_traceback(py, Some(tb));
                        }
                    }
                    return Err(err);
                }
                Some(_) => {}
                None if this.head.is_some() => {
                    return Err(PyRuntimeError::new_err(
                        "start_response() called a second time without exc_info",
                    ));
                }
                None => {}
            }
            let mut head = head_from_python(status, headers, this.ignored)?;
            head.answered_by_server = this.intercepted.contains(head.status);
            this.head = Some(head);
            this.announce_head();
        }
        slf.getattr(pyo3::intern!(py, "write"))
    }

    /// The legacy `write()` callable that `start_response` returns; its data is sent before
    /// it returns (when the server streams).
    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.check_live()?;
        let bytes = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "write() argument must be bytes, not {}",
                type_name(data)
            ))
        })?;
        self.start_streaming(data.py())?;
        self.push_body(bytes)
    }
}
