//! Running one request through a WSGI app: environ in, status/headers/body out, `close()` once.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::chunk::Chunk;
use crate::environ::{Field, RequestInfo};
use crate::file_wrapper::FileRange;
use crate::input::{Input, InputGate, RequestBody};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::response::{ResponseHead, StartResponse};
use crate::sink::ChunkSink;
use crate::watchdog::RequestWatch;

/// How the app's part of a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// A full response: send `head` and `body` (after what was streamed, if anything).
    Complete,
    /// Failed before any body byte was produced: answer 500 (the traceback is logged).
    Failed,
    /// Failed after body bytes were produced: send what there is, then cut the connection so
    /// the client sees an incomplete message.
    Truncated,
    /// The client went away while the response streamed; nothing more is to be sent.
    ClientGone,
}

/// What the server sends back.
#[derive(Debug)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub head: Option<ResponseHead>,
    /// The body, or what is left of it when the response was streamed.
    pub body: Chunk,
    /// The head and part of the body already went to the server through its sink.
    pub streamed: bool,
    /// The app returned a list or tuple: every byte was known before any was sent, so the server
    /// may announce a `Content-Length` the app did not set.
    pub length_known: bool,
    /// The body is this range of a file (`wsgi.file_wrapper`), to be sent by the server.
    pub file: Option<FileRange>,
    /// How long the request's thread waited for the GIL before the app could start.
    pub gil_wait: Duration,
}

impl Outcome {
    /// The Content-Length of the whole response under `head`: the app's own; else, for a body
    /// known whole before any of it was sent (a list, a file), its length, unless the status has
    /// no body or the response was cut. A HEAD's (`is_head`) empty body says nothing of GET's
    /// length (apps often leave it empty); one the app made is GET's, as a file's size is.
    pub fn content_length(&self, head: &ResponseHead, is_head: bool) -> Option<u64> {
        if head.content_length.is_some() {
            return head.content_length;
        }
        let says = !is_head || self.file.is_some() || !self.body.is_empty();
        let whole = self.length_known && self.kind != OutcomeKind::Truncated;
        (whole && says && !head.is_bodiless())
            .then(|| self.file.as_ref().map_or(self.body.len() as u64, |f| f.len))
    }

    /// The client went away: before the app ran, or while its response streamed (`streamed`:
    /// some of it went out).
    pub fn client_gone(streamed: bool) -> Outcome {
        Outcome {
            kind: OutcomeKind::ClientGone,
            head: None,
            body: Chunk::from_vec(Vec::new()),
            streamed,
            length_known: false,
            file: None,
            gil_wait: Duration::ZERO,
        }
    }

    fn failed() -> Outcome {
        Outcome {
            kind: OutcomeKind::Failed,
            head: None,
            body: Chunk::from_vec(Vec::new()),
            streamed: false,
            length_known: false,
            file: None,
            gil_wait: Duration::ZERO,
        }
    }
}

/// Runs `app` for one request on the calling thread (which must be allowed to run Python) and
/// returns the response. With a `sink`, a response whose body is not a list or tuple (a
/// generator, a file wrapper, `write()`) goes to the sink piece by piece as the app produces it.
/// Every failure is logged with its traceback and the request line.
pub fn run_request(
    app: &Py<PyAny>,
    info: &RequestInfo,
    body: RequestBody,
    sink: Option<Arc<dyn ChunkSink>>,
    watch: Option<&RequestWatch>,
) -> Outcome {
    let asked = Instant::now();
    crate::interpreter::attach(|py| {
        let gil_wait = asked.elapsed();
        crate::chunk::release_dropped(py);
        let _inside = match watch {
            Some(w) if !w.enter(py) => return Outcome::failed(),
            Some(w) => Some(Inside { py, watch: w }),
            None => None,
        };
        let mut outcome = crate::server_log::routed(info.log_route(), || {
            crate::logging_bridge::with_request(info.request_id(), || {
                run_attached(py, app.bind(py), info, body, sink, watch)
            })
        });
        crate::forked::exit_if_forked_child(py, "wsgi", crate::forked::Back::Returned);
        outcome.gil_wait = gil_wait;
        outcome
    })
}

/// Keeps the request marked as inside Python for its watch until dropped (with the GIL held).
struct Inside<'a, 'py> {
    py: Python<'py>,
    watch: &'a RequestWatch,
}

impl Drop for Inside<'_, '_> {
    fn drop(&mut self) {
        self.watch.leave(self.py);
    }
}

fn log_failure(py: Python<'_>, info: &RequestInfo, what: &str, err: &PyErr) {
    let traceback = crate::traceback::format(py, err);
    log_error(info, what, &traceback);
}

/// [`log_failure`] at info: what the app raised is not its failure (its client's, its
/// timeout's, logged already).
fn log_at_info(py: Python<'_>, info: &RequestInfo, what: &str, err: &PyErr) {
    let traceback = crate::traceback::format(py, err);
    tracing::info!(target: "wsgi", "{}", failure_line(info, what, &traceback));
}

/// Logs what the app raised, at info when it is the `TimeoutError` (or `TimeoutExit`) of its
/// deadline, which the watchdog has logged already with the stack it interrupted (a second
/// error entry, with where it landed, would read as another failure of the app's), as the ASGI
/// path logs a task cancelled past its deadline.
fn log_raised(
    py: Python<'_>,
    info: &RequestInfo,
    what: &str,
    err: &PyErr,
    watch: Option<&RequestWatch>,
) {
    if watch.is_some_and(RequestWatch::interrupted)
        && crate::timeout_exit::from_the_deadline(py, err)
    {
        let what = format!(
            "{what} the {} of its timeout, logged with its stack as it timed out",
            crate::timeout_exit::name(py, err)
        );
        log_at_info(py, info, &what, err);
    } else {
        log_failure(py, info, what, err);
    }
}

fn log_error(info: &RequestInfo, what: &str, detail: &str) {
    tracing::error!(target: "wsgi", "{}", failure_line(info, what, detail));
}

fn failure_line(info: &RequestInfo, what: &str, detail: &str) -> String {
    format!(
        "{what} while serving \"{}\", client: {}{}\n{detail}",
        info.request_line().escape_debug(),
        String::from_utf8_lossy(info.field(Field::RemoteAddr)),
        crate::logging_bridge::request_suffix(),
    )
}

fn run_attached(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    info: &RequestInfo,
    body: RequestBody,
    sink: Option<Arc<dyn ChunkSink>>,
    watch: Option<&RequestWatch>,
) -> Outcome {
    let (input, gate) = Input::new(body);
    let start = StartResponse::new(
        sink,
        info.ignored_accel(),
        info.intercepted(),
        info.field(Field::RequestMethod) == b"HEAD",
    );
    let ending = start.ending.clone();
    let (input, start_response) = match (Bound::new(py, input), Bound::new(py, start)) {
        (Ok(i), Ok(s)) => (i, s),
        (Err(e), _) | (_, Err(e)) => {
            log_failure(py, info, "cannot create the request objects", &e);
            return Outcome::failed();
        }
    };
    // Cut wsgi.input off from the server's buffers however this function ends (a Rust panic
    // re-raised by pyo3 included): the app may keep a reference to it past the request.
    let _detach = DetachOnDrop(&input, &gate);
    let result = info
        .to_environ(py, input.clone().into_any())
        .and_then(|environ| app.call1((environ, &start_response)));
    crate::forked::exit_if_forked_child(py, "wsgi", crate::forked::Back::after(&result));
    let mut length_known = false;
    let mut file = None;
    let iterated = match &result {
        Ok(iterable) => {
            length_known = iterable.is_exact_instance_of::<PyList>()
                || iterable.is_exact_instance_of::<PyTuple>();
            file = file_body(iterable, &start_response);
            length_known |= file.is_some();
            let iterated = if file.is_some() {
                Ok(())
            } else {
                consume(iterable, &start_response, length_known)
            };
            if iterated.is_ok() && file.is_none() {
                end_streamed_body(&start_response);
            }
            if let Some(watch) = watch.filter(|_| response_cut(&start_response)) {
                watch.response_cut(py);
            }
            let closed = close_iterable(iterable);
            // A child forked in the last item or in close() ends here, with close()'s outcome.
            crate::forked::exit_if_forked_child(py, "wsgi", crate::forked::Back::after(&closed));
            if let Err(e) = closed {
                log_raised(
                    py,
                    info,
                    "the response iterable's close() raised",
                    &e,
                    watch,
                );
            }
            iterated
        }
        Err(_) => Ok(()),
    };
    let client_failed = input.get().client_failed();
    drop(_detach);
    crate::errors::flush_thread();
    // A thread of the app's may be inside write(), its data waiting for the client: the
    // response ends once that returns, and its later calls raise.
    ending.store(true, std::sync::atomic::Ordering::Release);
    let mut sr = loop {
        if let Ok(sr) = start_response.try_borrow_mut() {
            break sr;
        }
        py.detach(|| std::thread::sleep(Duration::from_millis(1)));
    };
    sr.finished = true;
    let head = sr.head.take();
    let body = sr.body.take();
    let (committed, streamed, client_gone) = (sr.committed, sr.streamed, sr.client_gone);
    let (produced, excess) = (sr.produced, sr.excess);
    let ended_by_server = sr.sink.as_ref().is_some_and(|s| s.ended_by_server());
    drop(sr);

    // The server ended the event stream as the worker exits, and raised ClientDisconnected where
    // the app waited for its next event (`RequestWatch::end_wait_for_exit`).
    let woken_for_exit = ended_by_server
        && [result.as_ref().err(), iterated.as_ref().err()]
            .into_iter()
            .flatten()
            .any(|e| e.is_instance_of::<crate::response::ClientDisconnected>(py));
    if client_gone || woken_for_exit {
        let why = if ended_by_server {
            "the server ended the event stream as the worker exits"
        } else {
            "the connection to the client ended (closed, reset or timed out) while the response streamed"
        };
        tracing::info!(target: "wsgi", "{why}: \"{}\"", info.request_line().escape_debug());
        return Outcome::client_gone(streamed);
    }
    let error = match (result, iterated) {
        (Err(e), _) => Some(("the application raised", e)),
        (Ok(_), Err(e)) => Some(("iterating the response raised", e)),
        _ => None,
    };
    if let Some((what, err)) = error {
        if client_failed {
            // The client's broken body, which the app met in wsgi.input: the server answers
            // for it (nginx with its 4xx) and logs client errors at info, as nginx does.
            let what = format!("the client's request body failed, and {what}");
            log_at_info(py, info, &what, &err);
        } else {
            log_raised(py, info, what, &err, watch);
        }
        return Outcome {
            kind: if committed {
                OutcomeKind::Truncated
            } else {
                OutcomeKind::Failed
            },
            head: if committed { head } else { None },
            body: if committed {
                body
            } else {
                Chunk::from_vec(Vec::new())
            },
            streamed,
            length_known: false,
            file: None,
            gil_wait: Duration::ZERO,
        };
    }
    let Some(head) = head else {
        log_error(
            info,
            "the application returned without calling start_response()",
            "",
        );
        return Outcome::failed();
    };
    let mut kind = OutcomeKind::Complete;
    if let (Some(declared), false) = (head.content_length, head.body_unused()) {
        if excess > 0 {
            log_error(
                info,
                &format!("the application produced {} bytes for a Content-Length of {declared}; the excess was dropped", produced + excess),
                "",
            );
        } else if produced < declared
            && !head.is_bodiless()
            && info.field(Field::RequestMethod) != b"HEAD"
        {
            log_error(
                info,
                &format!("the application produced {produced} bytes for a Content-Length of {declared}; the connection was cut"),
                "",
            );
            kind = OutcomeKind::Truncated;
        }
    }
    Outcome {
        kind,
        head: Some(head),
        body,
        streamed,
        length_known,
        file,
        gil_wait: Duration::ZERO,
    }
}

/// A `wsgi.file_wrapper` over a regular file, when nothing was sent yet: the server sends the
/// file itself. Counts as the app's whole body.
fn file_body(
    iterable: &Bound<'_, PyAny>,
    start_response: &Bound<'_, StartResponse>,
) -> Option<FileRange> {
    let mut sr = start_response.try_borrow_mut().ok()?;
    let head = sr.head.as_ref()?;
    if sr.streaming || sr.committed || !sr.body.is_empty() || head.body_unused() {
        return None;
    }
    let range = crate::file_wrapper::file_range(iterable, head.content_length)?;
    sr.produced = range.len;
    sr.committed = range.len > 0;
    Some(range)
}

struct DetachOnDrop<'a, 'py>(&'a Bound<'py, Input>, &'a InputGate);

impl Drop for DetachOnDrop<'_, '_> {
    fn drop(&mut self) {
        // No read may touch the server's memory from now on, and none is under way when this
        // returns (another thread may hold the object; its reads raise).
        self.1.close(self.0.py());
        // The buffers' descriptions can go at once (no read is under way now).
        self.0.get().detach();
    }
}

/// Takes every body item from the iterable into the response: held back for a list or tuple
/// (sent in one piece), streamed for anything else.
fn consume(
    iterable: &Bound<'_, PyAny>,
    start_response: &Bound<'_, StartResponse>,
    sequence: bool,
) -> PyResult<()> {
    let py = iterable.py();
    // Takes one item; whether the app's Content-Length is now all produced.
    let take = |item: Bound<'_, PyAny>| -> PyResult<bool> {
        let bytes = item.cast::<PyBytes>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "response body items must be bytes, not {}",
                crate::response::type_name(&item)
            ))
        })?;
        let mut sr = StartResponse::in_use(start_response)?;
        sr.push_body(bytes)?;
        Ok(sr.has_whole_body())
    };
    if sequence {
        if let Ok(list) = iterable.cast::<PyList>() {
            for item in list.iter() {
                take(item)?;
            }
        } else if let Ok(tuple) = iterable.cast::<PyTuple>() {
            for item in tuple.iter() {
                take(item)?;
            }
        }
        return Ok(());
    }
    let iterator = iterable.try_iter()?;
    StartResponse::in_use(start_response)?.start_streaming(py)?;
    for item in iterator {
        // A child the app forked in its iterable would wait for room that nobody makes.
        crate::forked::exit_if_forked_child(py, "wsgi", crate::forked::Back::after(&item));
        // PEP 3333: once its Content-Length is sent, the iteration stops (an endless
        // generator, a file behind the length, would run on for nothing).
        if take(item?)? {
            break;
        }
    }
    Ok(())
}

/// A streamed body is whole once the iterable is exhausted (with a Content-Length, once that
/// many bytes came): the server may end it now (the last chunk, HTTP/2's end of stream), so that
/// the client does not wait for the iterable's `close()` (Flask's `call_on_close`, Django's
/// `request_finished` handlers), as under gunicorn. A body short of its Content-Length is not
/// ended: the server cuts its connection after the request.
fn end_streamed_body(start_response: &Bound<'_, StartResponse>) {
    // Held by another thread of the app, in write(): its response ends with the outcome.
    let Ok(sr) = start_response.try_borrow() else {
        return;
    };
    if !sr.streamed
        || sr.client_gone
        || sr.finished
        || sr
            .head
            .as_ref()
            .is_none_or(|h| h.content_length.is_some() && !sr.has_whole_body())
    {
        return;
    }
    if sr.sink.as_ref().is_some_and(|sink| sink.body_complete()) {
        // A write() or start_response() from now on (from close(), or a thread of the app's)
        // would come after the end. None came in between: this thread has held the GIL since
        // the check, and a write() in flight holds the object.
        sr.ending.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Whether the server ended the response while the app's thread waited for it.
fn response_cut(start_response: &Bound<'_, StartResponse>) -> bool {
    start_response.try_borrow().is_ok_and(|sr| sr.client_gone)
}

fn close_iterable(iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    if iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<PyTuple>() {
        return Ok(());
    }
    let py = iterable.py();
    match iterable.getattr(pyo3::intern!(py, "close")) {
        Ok(close) => close.call0().map(drop),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::environ::RequestInfoBuilder;
    use crate::testing::with_python;
    use std::ffi::CString;

    fn app(code: &str) -> Py<PyAny> {
        with_python(|py| {
            let code = CString::new(code).unwrap();
            let module = PyModule::from_code(py, &code, c"test_app.py", c"test_app").unwrap();
            module.getattr("app").unwrap().unbind()
        })
    }

    fn request() -> RequestInfo {
        let mut b = RequestInfoBuilder::default();
        b.set(Field::RequestMethod, b"GET")
            .set(Field::PathInfo, b"/x")
            .set(Field::ServerProtocol, b"HTTP/1.1")
            .set(Field::RequestUri, b"/x");
        b.finish()
    }

    #[test]
    fn a_whole_response_has_the_content_length_its_body_says() {
        let head = |status, length| {
            let mut h = ResponseHead::new(status, b"200 OK", 0, 0);
            h.content_length = length;
            h
        };
        let outcome = |kind, body: &[u8], length_known| Outcome {
            kind,
            head: None,
            body: Chunk::from_vec(body.to_vec()),
            streamed: false,
            length_known,
            file: None,
            gil_wait: Duration::ZERO,
        };
        let list = outcome(OutcomeKind::Complete, b"hello", true);
        let empty = outcome(OutcomeKind::Complete, b"", true);
        assert_eq!(list.content_length(&head(200, None), false), Some(5));
        assert_eq!(list.content_length(&head(200, Some(9)), false), Some(9));
        assert_eq!(list.content_length(&head(200, None), true), Some(5));
        assert_eq!(empty.content_length(&head(200, None), false), Some(0));
        assert_eq!(empty.content_length(&head(200, None), true), None);
        assert_eq!(empty.content_length(&head(200, Some(7)), true), Some(7));
        assert_eq!(list.content_length(&head(304, None), false), None);
        let cut = outcome(OutcomeKind::Truncated, b"hello", true);
        assert_eq!(cut.content_length(&head(200, None), false), None);
        let rest_of_a_stream = outcome(OutcomeKind::Complete, b"hello", false);
        assert_eq!(
            rest_of_a_stream.content_length(&head(200, None), false),
            None
        );
    }

    fn run(code: &str) -> Outcome {
        run_request(
            &app(code),
            &request(),
            RequestBody::Buffered(Body::empty()),
            None,
            None,
        )
    }

    #[test]
    fn list_body_with_known_length() {
        let out = run("def app(e, sr):\n sr('200 OK', [('Content-Type', 'text/plain')])\n return [b'hello ', b'world']");
        assert_eq!(out.kind, OutcomeKind::Complete);
        assert_eq!(&*out.body, b"hello world");
        assert!(out.length_known);
        let head = out.head.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(
            head.headers().collect::<Vec<_>>(),
            vec![(&b"Content-Type"[..], &b"text/plain"[..])]
        );
    }

    #[test]
    fn generator_with_write_and_close_once() {
        let out = run(concat!(
            "closed = []\n",
            "class Body:\n",
            " def __iter__(self):\n  yield b'b'\n  yield b''\n  yield b'c'\n",
            " def close(self): closed.append(1)\n",
            "def app(e, sr):\n",
            " w = sr('201 Created', [])\n w(b'a')\n",
            " assert e['PATH_INFO'] == '/x' and e['wsgi.input'].read() == b''\n",
            " return Body()\n",
        ));
        assert_eq!(out.kind, OutcomeKind::Complete);
        assert_eq!(&*out.body, b"abc");
        assert!(!out.length_known);
        assert_eq!(out.head.unwrap().status, 201);
    }

    #[test]
    fn failures_before_and_after_the_first_byte() {
        assert_eq!(
            run("def app(e, sr):\n raise RuntimeError('boom')").kind,
            OutcomeKind::Failed
        );
        assert_eq!(
            run("def app(e, sr):\n return [b'x']").kind,
            OutcomeKind::Failed
        );
        assert_eq!(
            run("def app(e, sr):\n sr('200 OK', [])\n return [b'x', 'y']").kind,
            OutcomeKind::Truncated
        );
        assert_eq!(
            run("def app(e, sr):\n sr('200 OK', [])\n return ['x']").kind,
            OutcomeKind::Failed
        );
        assert_eq!(
            run("def app(e, sr):\n sr('200 OK', [('X', 'a\\nb')])\n return [b'x']").kind,
            OutcomeKind::Failed
        );
        assert_eq!(
            run("def app(e, sr):\n sr('200 OK', [])\n sr('500 Oops', [])\n return []").kind,
            OutcomeKind::Failed
        );
        assert_eq!(
            run("import sys\ndef app(e, sr):\n sys.exit(3)").kind,
            OutcomeKind::Failed
        );
    }

    #[test]
    fn exc_info_replaces_an_uncommitted_head() {
        let out = run(concat!(
            "import sys\n",
            "def app(e, sr):\n",
            " sr('200 OK', [('A', 'b')])\n",
            " try:\n  raise ValueError('x')\n",
            " except ValueError:\n  sr('500 Internal Server Error', [('C', 'd')], sys.exc_info())\n",
            " return [b'err']\n",
        ));
        assert_eq!(out.kind, OutcomeKind::Complete);
        let head = out.head.unwrap();
        assert_eq!(
            (head.status, head.headers().collect::<Vec<_>>()),
            (500, vec![(&b"C"[..], &b"d"[..])])
        );
    }

    #[test]
    fn large_list_items_are_held_whole_and_joined_in_order() {
        let one = run("def app(e, sr):\n sr('200 OK', [])\n return [b'a' * 20000]");
        assert_eq!(
            (one.kind, &*one.body),
            (OutcomeKind::Complete, &[b'a'; 20000][..])
        );
        let two =
            run("def app(e, sr):\n sr('200 OK', [])\n return [b'a' * 20000, b'bc', b'd' * 9000]");
        let mut want = vec![b'a'; 20000];
        want.extend_from_slice(b"bc");
        want.extend_from_slice(&[b'd'; 9000]);
        assert_eq!(&*two.body, &want[..]);
        let cut = run(
            "def app(e, sr):\n sr('200 OK', [('Content-Length', '10000')])\n return [b'x' * 30000]",
        );
        assert_eq!(&*cut.body, &[b'x'; 10000][..]);
    }

    #[test]
    fn content_length_is_honoured() {
        let long =
            run("def app(e, sr):\n sr('200 OK', [('Content-Length', '3')])\n return [b'abcdef']");
        assert_eq!(
            (long.kind, &*long.body),
            (OutcomeKind::Complete, &b"abc"[..])
        );
        let short =
            run("def app(e, sr):\n sr('200 OK', [('Content-Length', '10')])\n return [b'abc']");
        assert_eq!(short.kind, OutcomeKind::Truncated);
    }

    #[derive(Default)]
    struct Recorder {
        pieces: std::sync::Mutex<Vec<(Option<u16>, Vec<u8>)>>,
        gone_after: Option<usize>,
    }

    impl ChunkSink for Recorder {
        fn push(
            &self,
            head: Option<ResponseHead>,
            data: crate::chunk::Chunk,
        ) -> Result<(), crate::sink::ClientGone> {
            let mut pieces = self.pieces.lock().unwrap();
            if self.gone_after.is_some_and(|n| pieces.len() >= n) {
                return Err(crate::sink::ClientGone);
            }
            pieces.push((head.map(|h| h.status), data.to_vec()));
            Ok(())
        }
    }

    fn run_streaming(code: &str, sink: Arc<Recorder>) -> Outcome {
        run_request(
            &app(code),
            &request(),
            RequestBody::Buffered(Body::empty()),
            Some(sink),
            None,
        )
    }

    #[test]
    fn generators_and_write_stream_lists_do_not() {
        let sink = Arc::new(Recorder::default());
        let out = run_streaming(
            "def app(e, sr):\n sr('200 OK', [])\n yield b''\n yield b'a'\n yield b'b'",
            sink.clone(),
        );
        assert_eq!(
            (out.kind, out.streamed, out.body.len()),
            (OutcomeKind::Complete, true, 0)
        );
        assert_eq!(
            *sink.pieces.lock().unwrap(),
            vec![(Some(200), b"a".to_vec()), (None, b"b".to_vec())]
        );

        let sink = Arc::new(Recorder::default());
        let out = run_streaming(
            "def app(e, sr):\n sr('200 OK', [])(b'w')\n return [b'x']",
            sink.clone(),
        );
        assert!(out.streamed);
        assert_eq!(
            *sink.pieces.lock().unwrap(),
            vec![(Some(200), b"w".to_vec()), (None, b"x".to_vec())]
        );

        let sink = Arc::new(Recorder::default());
        let out = run_streaming(
            "def app(e, sr):\n sr('200 OK', [])\n return [b'x', b'y']",
            sink.clone(),
        );
        assert_eq!((out.streamed, &*out.body), (false, &b"xy"[..]));
        assert!(sink.pieces.lock().unwrap().is_empty());
    }

    #[test]
    fn a_long_stream_keeps_no_more_sent_pieces_than_one() {
        // Each piece is a new 16 KiB bytes object, lent to the sink, which drops it at once.
        let sink = Arc::new(Recorder::default());
        let out = run_streaming(
            "def app(e, sr):\n sr('200 OK', [])\n for i in range(50):\n  yield bytes([i]) * 16384",
            sink.clone(),
        );
        assert!(out.streamed);
        let pieces = sink.pieces.lock().unwrap();
        assert_eq!(pieces.len(), 50);
        assert!(pieces
            .iter()
            .enumerate()
            .all(|(i, (_, d))| d == &vec![i as u8; 16384]));
        // The last piece (and one of the chunk test's, running alongside) may still wait.
        assert!(crate::chunk::waiting_for_release() <= 2);
    }

    #[test]
    fn client_gone_stops_the_iterator_and_closes_it() {
        let sink = Arc::new(Recorder {
            gone_after: Some(2),
            ..Default::default()
        });
        let code = concat!(
            "state = {'next': 0, 'closed': 0}\n",
            "class Body:\n",
            " def __iter__(self): return self\n",
            " def __next__(self):\n  state['next'] += 1\n  return b'x'\n",
            " def close(self): state['closed'] += 1\n",
            "def app(e, sr):\n sr('200 OK', [])\n return Body()\n",
        );
        let app = app(code);
        let out = run_request(
            &app,
            &request(),
            RequestBody::Buffered(Body::empty()),
            Some(sink.clone()),
            None,
        );
        assert_eq!(out.kind, OutcomeKind::ClientGone);
        assert_eq!(sink.pieces.lock().unwrap().len(), 2);
        with_python(|py| {
            let state = app
                .bind(py)
                .getattr("__globals__")
                .unwrap()
                .get_item("state")
                .unwrap();
            assert_eq!(state.get_item("next").unwrap().extract::<u32>().unwrap(), 3);
            assert_eq!(
                state.get_item("closed").unwrap().extract::<u32>().unwrap(),
                1
            );
        });
    }
}
