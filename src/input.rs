//! `wsgi.input`: a read-only byte stream over the request body.
//!
//! Either the server has the whole body (memory or temp file: reads never wait), or it hands
//! the body over as it arrives ([`BodySource`]: a read waits, without the GIL, for the client).
//! Either way a read never blocks past the end of the body: it returns `b""` there.
//!
//! The object may outlive the request (an app thread, a `__del__`, a cache keeps it), but the
//! server's memory behind it does not. Every read holds a lease on the request's [`InputGate`];
//! when the request ends the gate is closed: the source is cancelled (a read waiting for the
//! client returns at once), the close waits for reads under way, and later reads raise.
//! Reads from several threads at once are served one at a time (each gets bytes of its own),
//! the others waiting without the GIL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::body::Body;

/// A request body the server delivers while the app runs (unbuffered uploads).
pub trait BodySource: Send + Sync {
    /// Waits (called without the GIL) until body bytes are available or the body has ended;
    /// returns at most `max` bytes, none at the end.
    fn read(&self, max: usize) -> std::io::Result<Vec<u8>>;

    /// The request is ending: a read waiting now, or made later, fails at once. Any thread.
    fn cancel(&self);
}

#[derive(Default)]
struct GateState {
    /// The thread whose read is under way (one at a time).
    reading: Option<std::thread::ThreadId>,
    /// Reads waiting for it to end.
    waiting: usize,
    closed: bool,
}

/// Whether `wsgi.input` may still touch the server's memory, and who is touching it.
#[derive(Default)]
pub struct InputGate {
    state: Mutex<GateState>,
    /// Signalled when a read ends or the gate closes, for those that wait.
    changed: Condvar,
    /// Cancelled when the gate closes.
    source: Option<Arc<dyn BodySource>>,
}

impl InputGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read may begin once no other is under way (another thread's read: waited for without
    /// the GIL); it holds the lease until it is dropped.
    fn enter(&self, py: Python<'_>) -> PyResult<Lease<'_>> {
        let me = std::thread::current().id();
        // Whether the read may go on (else the gate closed).
        let take = |st: &mut GateState| {
            if !st.closed {
                st.reading = Some(me);
            }
            !st.closed
        };
        let taken = {
            let mut st = self.lock();
            match st.reading {
                _ if st.closed => false,
                None => take(&mut st),
                // A read from inside this thread's own (a `__del__` the collector ran there)
                // would wait for itself.
                Some(reader) if reader == me => {
                    return Err(PyRuntimeError::new_err(
                        "wsgi.input read from inside one of its own reads",
                    ))
                }
                Some(_) => {
                    drop(st);
                    py.detach(|| {
                        let mut st = self.lock();
                        st.waiting += 1;
                        while st.reading.is_some() && !st.closed {
                            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                        st.waiting -= 1;
                        take(&mut st)
                    })
                }
            }
        };
        match taken {
            true => Ok(Lease(self)),
            false => Err(finished()),
        }
    }

    /// The request is over: no read may begin, a read waiting for the client is cancelled, and
    /// this returns once the read under way has ended (waiting without the GIL).
    pub fn close(&self, py: Python<'_>) {
        let busy = {
            let mut st = self.lock();
            st.closed = true;
            if st.waiting > 0 {
                self.changed.notify_all();
            }
            st.reading.is_some()
        };
        if let Some(source) = &self.source {
            source.cancel();
        }
        if busy {
            py.detach(|| {
                let mut st = self.lock();
                st.waiting += 1;
                while st.reading.is_some() {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.waiting -= 1;
            });
        }
    }
}

struct Lease<'a>(&'a InputGate);

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.reading = None;
        // A notify is a system call even with no waiter.
        if st.waiting > 0 {
            self.0.changed.notify_all();
        }
    }
}

fn finished() -> PyErr {
    PyValueError::new_err("wsgi.input read after the request finished")
}

/// Where the bytes come from.
pub enum RequestBody {
    /// The whole body, already received.
    Buffered(Body),
    /// The body as it arrives.
    Streamed(Arc<dyn BodySource>),
}

/// Bytes of a streamed body pulled from the server and not yet read by the app.
struct Streamed {
    source: Arc<dyn BodySource>,
    pending: Vec<u8>,
    done: bool,
    /// A read failed through the client's fault (the server's `ConnectionAborted`: a reset
    /// or cut connection, a broken chunked body, a body over the server's limit). Shared with
    /// the `Input`, which the server asks while an app thread may be reading.
    client_failed: Arc<AtomicBool>,
}

/// How much a line search or an unbounded read pulls at a time.
const PULL: usize = 64 * 1024;

impl Streamed {
    /// Pulls more bytes into `pending`; false at the end of the body.
    fn pull(&mut self, py: Python<'_>, max: usize) -> PyResult<bool> {
        if self.done {
            return Ok(false);
        }
        let source = self.source.clone();
        let chunk = py.detach(move || source.read(max)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionAborted {
                self.client_failed.store(true, Ordering::Relaxed);
            }
            PyOSError::new_err(format!("reading the request body: {e}"))
        })?;
        if chunk.is_empty() {
            self.done = true;
            return Ok(false);
        }
        self.pending.extend_from_slice(&chunk);
        Ok(true)
    }

    fn read(&mut self, py: Python<'_>, size: Option<usize>) -> PyResult<Vec<u8>> {
        while size.is_none_or(|n| self.pending.len() < n) {
            let want = size.map_or(PULL, |n| n - self.pending.len());
            if !self.pull(py, want)? {
                break;
            }
        }
        let n = size.map_or(self.pending.len(), |n| n.min(self.pending.len()));
        Ok(self.pending.drain(..n).collect())
    }

    fn read_line(&mut self, py: Python<'_>, size: Option<usize>) -> PyResult<Vec<u8>> {
        let mut searched = 0;
        loop {
            if let Some(i) = self.pending[searched..].iter().position(|&c| c == b'\n') {
                let end = (searched + i + 1).min(size.unwrap_or(usize::MAX));
                return Ok(self.pending.drain(..end).collect());
            }
            searched = self.pending.len();
            if size.is_some_and(|n| searched >= n) || !self.pull(py, PULL)? {
                let end = size.map_or(self.pending.len(), |n| n.min(self.pending.len()));
                return Ok(self.pending.drain(..end).collect());
            }
        }
    }
}

enum Source {
    Buffered(Body),
    Streamed(Streamed),
}

#[pyclass(module = "ngx_wsgi", name = "Input", frozen)]
pub struct Input {
    /// Taken by the read that holds the gate's lease (and by the server, once none can).
    reader: Mutex<Reader>,
    gate: Arc<InputGate>,
    /// The streamed body's [`Streamed::client_failed`].
    client_failed: Arc<AtomicBool>,
}

/// Where `wsgi.input` is in the body.
struct Reader {
    /// `None` once the request has finished: the server's buffers are gone.
    source: Option<Source>,
    pos: u64,
}

impl Input {
    /// The input over `body`, and the gate to close when the request ends.
    pub fn new(body: RequestBody) -> (Self, Arc<InputGate>) {
        let client_failed = Arc::new(AtomicBool::new(false));
        let (source, cancel) = match body {
            RequestBody::Buffered(body) => (Source::Buffered(body), None),
            RequestBody::Streamed(source) => (
                Source::Streamed(Streamed {
                    source: source.clone(),
                    pending: Vec::new(),
                    done: false,
                    client_failed: client_failed.clone(),
                }),
                Some(source),
            ),
        };
        let gate = Arc::new(InputGate {
            source: cancel,
            ..Default::default()
        });
        let input = Input {
            reader: Mutex::new(Reader {
                source: Some(source),
                pos: 0,
            }),
            gate: gate.clone(),
            client_failed,
        };
        (input, gate)
    }

    /// Whether reading the body failed through the client's fault: what the app raised then is
    /// most likely that failure, not a bug of its own.
    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    /// Cuts the stream off from the server's memory; later reads raise `ValueError`. After the
    /// gate's close (no read is under way then).
    pub fn detach(&self) {
        self.reader().source = None;
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the reader, holding the gate's lease: one read at a time.
    fn reading<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Reader) -> PyResult<R>,
    ) -> PyResult<R> {
        let _lease = self.gate.enter(py)?;
        // Unlocked before the lease ends: the server's detach after the gate's close takes it.
        let mut reader = self.reader();
        f(&mut reader)
    }
}

impl Reader {
    fn source(&mut self) -> PyResult<&mut Source> {
        self.source.as_mut().ok_or_else(finished)
    }

    fn body(&self) -> PyResult<&Body> {
        match &self.source {
            Some(Source::Buffered(body)) => Ok(body),
            Some(Source::Streamed(_)) => Err(PyValueError::new_err("the request body is streamed")),
            None => Err(finished()),
        }
    }

    /// The streamed body, when the body is streamed.
    fn streamed(&mut self) -> PyResult<Option<&mut Streamed>> {
        Ok(match self.source()? {
            Source::Streamed(s) => Some(s),
            Source::Buffered(_) => None,
        })
    }

    fn size_arg(size: Option<i64>) -> Option<usize> {
        size.filter(|&n| n >= 0).map(|n| n as usize)
    }

    /// The body's length, for `seek` and `tell`: a streamed body cannot seek
    /// (`io.UnsupportedOperation`, as a pipe's), one after the request cannot be read.
    fn seekable_len(&self, py: Python<'_>) -> PyResult<u64> {
        match &self.source {
            Some(Source::Buffered(body)) => Ok(body.len()),
            Some(Source::Streamed(_)) => Err(PyErr::from_value(
                py.import("io")?.getattr("UnsupportedOperation")?.call1((
                    "wsgi.input cannot seek: the request body is read as it arrives \
                     (wsgi_request_buffering off)",
                ))?,
            )),
            None => Err(finished()),
        }
    }

    fn remaining(&self) -> PyResult<u64> {
        Ok(self.body()?.len().saturating_sub(self.pos))
    }

    /// A size argument as PEP 3333 and `io` read it: `None` or negative means "all".
    fn limit(size: Option<i64>, remaining: u64) -> u64 {
        match size {
            Some(n) if n >= 0 => (n as u64).min(remaining),
            _ => remaining,
        }
    }

    fn read_line<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if let Some(streamed) = self.streamed()? {
            let line = streamed.read_line(py, Self::size_arg(size))?;
            return Ok(PyBytes::new(py, &line));
        }
        let limit = Self::limit(size, self.remaining()?);
        let body = self.body()?;
        let mut line: Vec<u8> = Vec::new();
        let mut pos = self.pos;
        let end = self.pos + limit;
        while pos < end {
            let chunk = body
                .peek_at(pos, (end - pos).min(usize::MAX as u64) as usize)
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            if chunk.is_empty() {
                break;
            }
            let (take, done) = match memchr(b'\n', &chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if line.is_empty() && done {
                // The whole line sits in one chunk: no intermediate copy.
                let bytes = PyBytes::new(py, &chunk[..take]);
                self.pos = pos + take as u64;
                return Ok(bytes);
            }
            line.extend_from_slice(&chunk[..take]);
            pos += take as u64;
            if done {
                break;
            }
        }
        self.pos = pos;
        Ok(PyBytes::new(py, &line))
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size = None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.reading(py, |reader| {
            if let Some(streamed) = reader.streamed()? {
                let data = streamed.read(py, Reader::size_arg(size))?;
                return Ok(PyBytes::new(py, &data));
            }
            let n = Reader::limit(size, reader.remaining()?) as usize;
            let pos = reader.pos;
            let bytes = crate::body_bytes::read_bytes(py, reader.body()?, pos, n)?;
            reader.pos += n as u64;
            Ok(bytes)
        })
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.reading(py, |reader| reader.read_line(py, size))
    }

    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<i64>) -> PyResult<Bound<'py, PyList>> {
        self.reading(py, |reader| {
            let lines = PyList::empty(py);
            let mut total = 0u64;
            loop {
                let line = reader.read_line(py, None)?;
                let len = line.as_bytes().len() as u64;
                if len == 0 {
                    break;
                }
                lines.append(line)?;
                total += len;
                if matches!(hint, Some(h) if h > 0 && total >= h as u64) {
                    break;
                }
            }
            Ok(lines)
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.reading(py, |reader| reader.read_line(py, None))?;
        Ok(if line.as_bytes().is_empty() {
            None
        } else {
            Some(line)
        })
    }

    fn readable(&self) -> bool {
        true
    }

    /// Whether `seek` works: the whole body is at hand (nginx's buffers or temp file), not
    /// streamed as it arrives (`wsgi_request_buffering off`).
    fn seekable(&self, py: Python<'_>) -> PyResult<bool> {
        self.reading(py, |reader| {
            Ok(matches!(reader.source()?, Source::Buffered(_)))
        })
    }

    /// The position in the body.
    fn tell(&self, py: Python<'_>) -> PyResult<u64> {
        self.reading(py, |reader| {
            reader.seekable_len(py)?;
            Ok(reader.pos)
        })
    }

    /// Moves to `offset` from the start (`whence` 0), the position (1) or the end (2), as
    /// `io` does; past the end, reads return `b""`. Frameworks that retry a request (Zope on a
    /// conflict between transactions) read the body again from 0.
    #[pyo3(signature = (offset, whence = 0))]
    fn seek(&self, py: Python<'_>, offset: i64, whence: i32) -> PyResult<u64> {
        self.reading(py, |reader| {
            let len = reader.seekable_len(py)?;
            let base = match whence {
                0 => 0,
                1 => reader.pos,
                2 => len,
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "invalid whence ({whence}, should be 0, 1 or 2)"
                    )))
                }
            };
            let pos = i128::from(base) + i128::from(offset);
            if pos < 0 {
                return Err(PyValueError::new_err(format!(
                    "negative seek position {pos}"
                )));
            }
            reader.pos = u64::try_from(pos).unwrap_or(u64::MAX);
            Ok(reader.pos)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    fn input<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, Input> {
        let (input, _gate) = Input::new(RequestBody::Buffered(Body::from_vec(data.to_vec())));
        Bound::new(py, input).unwrap()
    }

    fn call(obj: &Bound<'_, Input>, code: &str) -> Vec<u8> {
        let py = obj.py();
        let locals = pyo3::types::PyDict::new(py);
        locals.set_item("f", obj).unwrap();
        let code = std::ffi::CString::new(code).unwrap();
        py.eval(&code, None, Some(&locals))
            .unwrap()
            .extract()
            .unwrap()
    }

    #[test]
    fn read_sizes_and_end_of_body() {
        with_python(|py| {
            let f = input(py, b"abcdef");
            assert_eq!(call(&f, "f.read(2)"), b"ab");
            assert_eq!(call(&f, "f.read(-1)"), b"cdef");
            assert_eq!(call(&f, "f.read()"), b"");
            assert_eq!(call(&f, "f.read(10)"), b"");
        });
    }

    #[test]
    fn lines_iteration_and_readlines() {
        with_python(|py| {
            let f = input(py, b"one\ntwo\nthree");
            assert_eq!(call(&f, "f.readline(2)"), b"on");
            assert_eq!(call(&f, "f.readline()"), b"e\n");
            assert_eq!(call(&f, "b'|'.join(f.readlines())"), b"two\n|three");
            let f = input(py, b"a\nb\n");
            assert_eq!(call(&f, "b''.join(x.upper() for x in f)"), b"A\nB\n");
        });
    }

    /// A client that sends nothing until the request is cancelled.
    #[derive(Default)]
    struct Silent {
        cancelled: std::sync::Mutex<bool>,
        wake: std::sync::Condvar,
        waiting: std::sync::atomic::AtomicBool,
    }

    impl BodySource for Silent {
        fn read(&self, _max: usize) -> std::io::Result<Vec<u8>> {
            let mut c = self.cancelled.lock().unwrap();
            self.waiting
                .store(true, std::sync::atomic::Ordering::SeqCst);
            while !*c {
                c = self.wake.wait(c).unwrap();
            }
            Err(std::io::Error::other("the request is over"))
        }

        fn cancel(&self) {
            *self.cancelled.lock().unwrap() = true;
            self.wake.notify_all();
        }
    }

    #[test]
    fn closing_cancels_a_read_under_way_and_refuses_later_ones() {
        let source = Arc::new(Silent::default());
        let (input, gate) = with_python(|py| {
            let (input, gate) = Input::new(RequestBody::Streamed(source.clone()));
            (Py::new(py, input).unwrap(), gate)
        });
        let reader = {
            let input = with_python(|py| input.clone_ref(py));
            std::thread::spawn(move || {
                crate::interpreter::attach(|py| {
                    input.bind(py).call_method0("read").unwrap_err().to_string()
                })
            })
        };
        while !source.waiting.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
        with_python(|py| gate.close(py));
        let err = reader.join().unwrap();
        assert!(err.contains("the request is over"), "{err}");
        with_python(|py| {
            let err = input.bind(py).call_method0("readline").unwrap_err();
            assert!(
                err.to_string().contains("after the request finished"),
                "{err}"
            );
        });
    }

    #[test]
    fn detached_input_refuses_reads() {
        with_python(|py| {
            let f = input(py, b"abc");
            f.get().detach();
            let err = f.call_method0("read").unwrap_err();
            assert!(err.is_instance_of::<PyValueError>(py));
        });
    }

    /// A client whose read runs Python on the reading thread that reads the input again (as a
    /// `__del__` the collector runs there could).
    #[derive(Default)]
    struct Reentrant {
        input: std::sync::OnceLock<Py<Input>>,
        seen: std::sync::Mutex<Option<String>>,
    }

    impl BodySource for Reentrant {
        fn cancel(&self) {}

        fn read(&self, _max: usize) -> std::io::Result<Vec<u8>> {
            let err = crate::interpreter::attach(|py| {
                let input = self.input.get().unwrap().bind(py);
                input.call_method0("read").unwrap_err().to_string()
            });
            *self.seen.lock().unwrap() = Some(err);
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_read_from_inside_a_read_on_its_thread_raises_instead_of_waiting_for_itself() {
        let source = Arc::new(Reentrant::default());
        with_python(|py| {
            let (input, _gate) = Input::new(RequestBody::Streamed(source.clone()));
            let input = Py::new(py, input).unwrap();
            let _ = source.input.set(input.clone_ref(py));
            assert_eq!(call(input.bind(py), "f.read()"), b"");
        });
        let seen = source.seen.lock().unwrap().clone().unwrap();
        assert!(seen.contains("from inside one of its own reads"), "{seen}");
    }

    struct Trickle(std::sync::Mutex<std::collections::VecDeque<Vec<u8>>>);

    impl BodySource for Trickle {
        fn cancel(&self) {}

        fn read(&self, max: usize) -> std::io::Result<Vec<u8>> {
            let mut q = self.0.lock().unwrap();
            match q.front_mut() {
                None => Ok(Vec::new()),
                Some(front) if front.len() > max => Ok(front.drain(..max).collect()),
                Some(_) => Ok(q.pop_front().unwrap()),
            }
        }
    }

    fn streamed<'py>(py: Python<'py>, pieces: &[&[u8]]) -> Bound<'py, Input> {
        let q = pieces.iter().map(|p| p.to_vec()).collect();
        let source: Arc<dyn BodySource> = Arc::new(Trickle(std::sync::Mutex::new(q)));
        Bound::new(py, Input::new(RequestBody::Streamed(source)).0).unwrap()
    }

    #[test]
    fn streamed_body_reads_across_pieces() {
        with_python(|py| {
            let f = streamed(py, &[b"ab", b"c\nde", b"f\n", b"tail"]);
            assert_eq!(call(&f, "f.read(1)"), b"a");
            assert_eq!(call(&f, "f.readline()"), b"bc\n");
            assert_eq!(call(&f, "f.readline(2)"), b"de");
            assert_eq!(call(&f, "f.read(2)"), b"f\n");
            assert_eq!(call(&f, "f.read()"), b"tail");
            assert_eq!(call(&f, "f.read()"), b"");
            assert_eq!(call(&f, "f.readline()"), b"");
            let f = streamed(py, &[b"x\ny", b"\nz"]);
            assert_eq!(call(&f, "b'|'.join(f)"), b"x\n|y\n|z");
        });
    }
}
