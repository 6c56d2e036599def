//! The HTTP exchange against a fake server: messages checked, the response's head and pieces,
//! bodies read, failures answered.

use super::*;
use crate::asgi::event_loop::AsgiLoop;
use crate::asgi::scope::ScopeField;
use crate::body::Body;
use crate::testing::with_python;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Default)]
struct Fake {
    pushed: Mutex<Vec<(Option<u16>, Vec<u8>)>>,
    full: AtomicBool,
    gone: AtomicBool,
    body: Mutex<VecDeque<BodyRead>>,
    ended: Mutex<Vec<HttpEnd>>,
    file: Mutex<Option<(u16, u64)>>,
    /// Acts on X-Accel-Redirect (as nginx does unless the location ignores it).
    redirects: AtomicBool,
    redirected: Mutex<Option<Vec<u8>>>,
}

impl HttpServer for Fake {
    fn room(&self) -> Result<bool, ClientGone> {
        if self.gone.load(Ordering::Relaxed) {
            return Err(ClientGone);
        }
        Ok(!self.full.load(Ordering::Relaxed))
    }
    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone> {
        self.pushed
            .lock()
            .unwrap()
            .push((head.map(|h| h.status), data.to_vec()));
        Ok(())
    }
    fn read_body(&self, _max: usize) -> BodyRead {
        self.body
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(BodyRead::Pending)
    }
    fn send_file(&self, head: ResponseHead, file: FileRange) {
        *self.file.lock().unwrap() = Some((head.status, file.len));
    }
    fn answer_in_place(&self, head: ResponseHead) -> Result<(), ResponseHead> {
        if !self.redirects.load(Ordering::Relaxed) {
            return Err(head);
        }
        *self.redirected.lock().unwrap() = head.internal_redirect().map(<[u8]>::to_vec);
        Ok(())
    }
    fn client_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
    fn all_sent(&self) -> bool {
        !self.full.load(Ordering::Relaxed)
    }
    fn finish(&self, end: HttpEnd) {
        self.ended.lock().unwrap().push(end);
    }
}

fn exchange<'py>(
    py: Python<'py>,
    server: &Arc<Fake>,
    body: Option<Body>,
) -> Bound<'py, HttpExchange> {
    static OWNER: std::sync::OnceLock<&'static AsgiLoop> = std::sync::OnceLock::new();
    let owner = OWNER.get_or_init(AsgiLoop::for_tests);
    let mut scope = HttpScope::builder();
    scope
        .http_version("1.1")
        .set(ScopeField::Method, b"GET")
        .set(ScopeField::Target, b"/");
    let scope = scope.build();
    let req = HttpRequest {
        app: 0,
        scope: Arc::new(scope),
        body: body.map(|b| Arc::new(BodyLease::new(b))),
        server: server.clone(),
        waker: owner.waker(),
        watch: Arc::new(TaskWatch::default()),
    };
    Bound::new(py, HttpExchange::new(req)).unwrap()
}

fn send(ex: &Bound<'_, HttpExchange>, message: &str) -> PyResult<bool> {
    let py = ex.py();
    let message = py.eval(&std::ffi::CString::new(message).unwrap(), None, None)?;
    Ok(ex
        .call_method1("send_now", (message,))?
        .extract::<Option<bool>>()?
        .expect("no quiet drop: no receive() listens here"))
}

fn error_of(result: PyResult<bool>) -> String {
    result.unwrap_err().to_string()
}

const START: &str = "{'type': 'http.response.start', 'status': 201, 'headers': [(b'x-a', b'1')]}";

#[test]
fn a_response_goes_out_head_with_its_first_piece_and_ends_once() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, Some(Body::from_vec(b"in".to_vec())));
        assert!(send(&ex, START).unwrap());
        assert!(
            server.pushed.lock().unwrap().is_empty(),
            "the head waits for the body"
        );
        assert!(send(
            &ex,
            "{'type': 'http.response.body', 'body': b'ab', 'more_body': True}"
        )
        .unwrap());
        server.full.store(true, Ordering::Relaxed);
        assert!(
            !send(&ex, "{'type': 'http.response.body', 'body': b'cd'}").unwrap(),
            "no room: await"
        );
        server.full.store(false, Ordering::Relaxed);
        assert!(send(&ex, "{'type': 'http.response.body', 'body': b'cd'}").unwrap());
        assert_eq!(
            *server.pushed.lock().unwrap(),
            vec![(Some(201), b"ab".to_vec()), (None, b"cd".to_vec())]
        );
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Complete]);
        let after = error_of(send(&ex, "{'type': 'http.response.body', 'body': b'x'}"));
        assert!(after.contains("after the response was complete"), "{after}");
        ex.call_method1("ended", (py.None(),)).unwrap();
        assert_eq!(server.ended.lock().unwrap().len(), 1, "finished once");
        let msg = ex.call_method0("receive_now").unwrap();
        assert_eq!(
            msg.get_item("type").unwrap().extract::<String>().unwrap(),
            "http.disconnect"
        );
    });
}

#[test]
fn a_bodiless_response_ends_with_its_head() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        let start = "{'type': 'http.response.start', 'status': 204, 'headers': []}";
        let piece = "{'type': 'http.response.body', 'body': b'ab', 'more_body': True}";
        assert!(send(&ex, start).unwrap());
        assert!(send(&ex, piece).unwrap());
        assert_eq!(
            *server.pushed.lock().unwrap(),
            vec![(Some(204), Vec::new())]
        );
        assert_eq!(
            *server.ended.lock().unwrap(),
            vec![HttpEnd::Complete],
            "ended with the head"
        );
        let msg = ex.call_method0("receive_now").unwrap();
        assert_eq!(
            msg.get_item("type").unwrap().extract::<String>().unwrap(),
            "http.disconnect"
        );
        let dropped = py
            .eval(&std::ffi::CString::new(piece).unwrap(), None, None)
            .unwrap();
        let taken = ex.call_method1("send_now", (dropped,)).unwrap();
        assert!(
            taken.is_none(),
            "dropped quietly, a turn of the loop awaited"
        );
        // Past its while, or its bytes: an endless stream is stopped.
        let since = ex.borrow().bodiless_since;
        ex.borrow_mut().bodiless_since =
            Some(std::time::Instant::now() - super::BODILESS_QUIET * 2);
        let more = send(&ex, piece).unwrap_err();
        assert!(more.is_instance_of::<ClientDisconnected>(py), "{more}");
        ex.borrow_mut().bodiless_since = since;
        ex.borrow_mut().bodiless_dropped = super::BODILESS_QUIET_BYTES;
        let more = send(&ex, piece).unwrap_err();
        assert!(more.is_instance_of::<ClientDisconnected>(py), "{more}");
        assert!(send(&ex, "{'type': 'http.response.body', 'body': b'z'}").unwrap());
        ex.call_method1("ended", (py.None(),)).unwrap();
        assert_eq!(server.ended.lock().unwrap().len(), 1, "finished once");
        assert_eq!(
            server.pushed.lock().unwrap().len(),
            1,
            "nothing more pushed"
        );
    });
}

#[test]
fn an_event_streams_head_goes_at_its_start() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        let start = "{'type': 'http.response.start', 'status': 200, \
            'headers': [(b'content-type', b'text/event-stream; charset=utf-8')]}";
        assert!(send(&ex, start).unwrap());
        assert_eq!(
            *server.pushed.lock().unwrap(),
            vec![(Some(200), Vec::new())]
        );
        assert!(send(
            &ex,
            "{'type': 'http.response.body', 'body': b'data: x\\n\\n'}"
        )
        .unwrap());
        assert_eq!(
            server.pushed.lock().unwrap()[1],
            (None, b"data: x\n\n".to_vec())
        );
        // With a length it is a file of events (a pathsend may follow): held as any head.
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        let start = "{'type': 'http.response.start', 'status': 200, 'headers': \
            [(b'content-type', b'text/event-stream'), (b'content-length', b'3')]}";
        assert!(send(&ex, start).unwrap());
        assert!(server.pushed.lock().unwrap().is_empty());
    });
}

#[test]
fn an_empty_first_piece_with_more_to_come_sends_the_head() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        assert!(send(&ex, START).unwrap());
        let empty = "{'type': 'http.response.body', 'body': b'', 'more_body': True}";
        server.full.store(true, Ordering::Relaxed);
        assert!(!send(&ex, empty).unwrap(), "no room: await");
        server.full.store(false, Ordering::Relaxed);
        assert!(send(&ex, empty).unwrap());
        assert!(send(&ex, empty).unwrap());
        assert!(send(&ex, "{'type': 'http.response.body', 'body': b'ab'}").unwrap());
        assert_eq!(
            *server.pushed.lock().unwrap(),
            vec![(Some(201), Vec::new()), (None, b"ab".to_vec())],
            "the head alone, then the body; later empty pieces are nothing"
        );
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Complete]);
    });
}

const REDIRECT: &str = "{'type': 'http.response.start', 'status': 200, \
    'headers': [(b'x-accel-redirect', b'/protected/a.bin'), (b'content-length', b'3')]}";

#[test]
fn an_accel_redirect_is_the_whole_response_and_its_body_is_dropped() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        server.redirects.store(true, Ordering::Relaxed);
        let ex = exchange(py, &server, None);
        assert!(send(&ex, REDIRECT).unwrap());
        server.full.store(true, Ordering::Relaxed);
        assert!(
            send(
                &ex,
                "{'type': 'http.response.body', 'body': b'ab', 'more_body': True}"
            )
            .unwrap(),
            "a dropped piece never waits for room"
        );
        assert_eq!(
            *server.ended.lock().unwrap(),
            vec![HttpEnd::Complete],
            "answered at the head, as nginx answers a proxied app's"
        );
        assert!(send(&ex, "{'type': 'http.response.body', 'body': b'cdef'}").unwrap());
        assert!(server.pushed.lock().unwrap().is_empty(), "nothing sent");
        assert_eq!(
            server.redirected.lock().unwrap().as_deref(),
            Some(&b"/protected/a.bin"[..])
        );
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Complete]);
    });
}

#[test]
fn an_endless_body_after_a_redirect_head_stops_with_client_disconnected() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        server.redirects.store(true, Ordering::Relaxed);
        let ex = exchange(py, &server, None);
        assert!(send(&ex, REDIRECT).unwrap());
        let piece = py
            .eval(
                c"{'type': 'http.response.body', 'body': b'x' * 65536, 'more_body': True}",
                None,
                None,
            )
            .unwrap();
        let mut taken = 0;
        let error = loop {
            match ex.call_method1("send_now", (&piece,)) {
                Ok(_) => taken += 1,
                Err(e) => break e,
            }
            assert!(taken < 100, "dropped for ever");
        };
        assert!(error.is_instance_of::<ClientDisconnected>(py), "{error}");
        assert!(
            error
                .to_string()
                .contains("answered in the application's place"),
            "{error}"
        );
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Complete]);
    });
}

#[test]
fn an_accel_redirect_the_server_ignores_is_an_ordinary_response() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        assert!(send(&ex, REDIRECT).unwrap());
        assert!(send(&ex, "{'type': 'http.response.body', 'body': b'abc'}").unwrap());
        assert_eq!(
            *server.pushed.lock().unwrap(),
            vec![(Some(200), b"abc".to_vec())]
        );
        assert!(server.redirected.lock().unwrap().is_none());
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Complete]);
    });
}

#[test]
fn an_app_that_fails_after_a_redirect_head_before_its_body_gets_a_500() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        server.redirects.store(true, Ordering::Relaxed);
        let ex = exchange(py, &server, None);
        assert!(send(&ex, REDIRECT).unwrap());
        let error = py.eval(c"RuntimeError('broken')", None, None).unwrap();
        ex.call_method1("ended", (error,)).unwrap();
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Failed]);
    });
}

#[test]
fn messages_are_checked() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        for (message, expect) in [
            ("{'type': 'http.response.body', 'body': b'x'}", "before http.response.start"),
            ("{'type': 'nope'}", "unexpected ASGI message type"),
            ("{'status': 200}", "needs a \"type\""),
            ("{'type': 'http.response.start', 'status': True}", "not bool"),
            ("{'type': 'http.response.start', 'status': '200'}", "must be an int"),
            ("{'type': 'http.response.start', 'status': 2**70}", "status out of range: an HTTP response status is 200 to 999"),
            ("{'type': 'http.response.start', 'status': 101}", "1xx"),
            ("{'type': 'http.response.start', 'status': 200, 'headers': [(b'a b', b'1')]}", "token"),
            ("{'type': 'http.response.start', 'status': 200, 'headers': [(b'x', b'1\\r\\n')]}", "control"),
            ("{'type': 'http.response.start', 'status': 200, 'headers': [('x', 'y')]}", "pair of bytes"),
            ("{'type': 'http.response.start', 'status': 200, 'headers': [(b'content-length', b'x')]}", "not a number"),
        ] {
            let err = error_of(send(&ex, message));
            assert!(err.contains(expect), "{message}: {err}");
        }
        assert!(server.pushed.lock().unwrap().is_empty());
    });
}

#[test]
fn trailers_true_is_ignored_and_trailers_after_the_body_dropped() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        send(
            &ex,
            "{'type': 'http.response.start', 'status': 200, 'trailers': True}",
        )
        .unwrap();
        let early = error_of(send(&ex, "{'type': 'http.response.trailers'}"));
        assert!(
            early.contains("before the response body was complete"),
            "{early}"
        );
        send(&ex, "{'type': 'http.response.body', 'body': b'ab'}").unwrap();
        let bad = error_of(send(
            &ex,
            "{'type': 'http.response.trailers', 'headers': [('x', 'y')]}",
        ));
        assert!(bad.contains("pair of bytes"), "{bad}");
        send(
            &ex,
            "{'type': 'http.response.trailers', 'headers': [(b'x-sum', b'1')]}",
        )
        .unwrap();
        assert_eq!(
            *server.pushed.lock().unwrap(),
            vec![(Some(200), b"ab".to_vec())]
        );
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Complete]);
    });
}

#[test]
fn content_length_is_held_to() {
    with_python(|py| {
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        send(&ex, "{'type': 'http.response.start', 'status': 200, 'headers': [(b'content-length', b'3')]}").unwrap();
        let long = error_of(send(&ex, "{'type': 'http.response.body', 'body': b'abcd'}"));
        assert!(long.contains("longer than its content-length"), "{long}");
        send(&ex, "{'type': 'http.response.body', 'body': b'ab'}").unwrap();
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Truncated]);
    });
}

#[test]
fn failures_end_as_500_or_cut() {
    with_python(|py| {
        let err = pyo3::exceptions::PyValueError::new_err("boom").into_value(py);
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        send(&ex, START).unwrap();
        ex.call_method1("ended", (err.clone_ref(py),)).unwrap();
        assert_eq!(
            *server.ended.lock().unwrap(),
            vec![HttpEnd::Failed],
            "nothing went out"
        );
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        send(&ex, START).unwrap();
        send(
            &ex,
            "{'type': 'http.response.body', 'body': b'a', 'more_body': True}",
        )
        .unwrap();
        ex.call_method1("ended", (err,)).unwrap();
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Truncated]);
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, None);
        ex.call_method1("ended", (py.None(),)).unwrap();
        assert_eq!(
            *server.ended.lock().unwrap(),
            vec![HttpEnd::Failed],
            "no response at all"
        );
    });
}

#[test]
fn bodies_in_messages_then_waiting_then_disconnect() {
    with_python(|py| {
        let kind = |m: &Bound<'_, PyAny>| m.get_item("type").unwrap().extract::<String>().unwrap();
        let server = Arc::new(Fake::default());
        server.body.lock().unwrap().extend([
            BodyRead::Data(b"ab".to_vec()),
            BodyRead::Pending,
            BodyRead::Data(b"c".to_vec()),
            BodyRead::End,
        ]);
        let last_with_data = Arc::new(Fake::default());
        last_with_data
            .body
            .lock()
            .unwrap()
            .extend([BodyRead::Last(b"xyz".to_vec())]);
        let only = exchange(py, &last_with_data, None)
            .call_method0("receive_now")
            .unwrap();
        assert_eq!(
            only.get_item("body").unwrap().extract::<Vec<u8>>().unwrap(),
            b"xyz"
        );
        assert!(
            !only
                .get_item("more_body")
                .unwrap()
                .extract::<bool>()
                .unwrap(),
            "the last bytes end the body in the same message"
        );
        let ex = exchange(py, &server, None);
        let first = ex.call_method0("receive_now").unwrap();
        assert_eq!(
            first
                .get_item("body")
                .unwrap()
                .extract::<Vec<u8>>()
                .unwrap(),
            b"ab"
        );
        assert!(first
            .get_item("more_body")
            .unwrap()
            .extract::<bool>()
            .unwrap());
        assert!(
            ex.call_method0("receive_now").unwrap().is_none(),
            "nothing yet: await"
        );
        ex.call_method0("receive_now").unwrap();
        let last = ex.call_method0("receive_now").unwrap();
        assert!(!last
            .get_item("more_body")
            .unwrap()
            .extract::<bool>()
            .unwrap());
        assert!(
            ex.call_method0("receive_now").unwrap().is_none(),
            "waits for a disconnect"
        );
        server.gone.store(true, Ordering::Relaxed);
        assert_eq!(
            kind(&ex.call_method0("receive_now").unwrap()),
            "http.disconnect"
        );
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::ClientGone]);
        let err =
            error_of(send(&ex, START).and_then(|_| send(&ex, "{'type': 'http.response.body'}")));
        assert!(err.contains("closed the connection"), "{err}");
        let big = vec![7u8; (BUFFERED_MESSAGE as usize) + 10];
        let server = Arc::new(Fake::default());
        let ex = exchange(py, &server, Some(Body::from_vec(big)));
        let one = ex.call_method0("receive_now").unwrap();
        assert!(one
            .get_item("more_body")
            .unwrap()
            .extract::<bool>()
            .unwrap());
        let two = ex.call_method0("receive_now").unwrap();
        assert_eq!(
            two.get_item("body")
                .unwrap()
                .extract::<Vec<u8>>()
                .unwrap()
                .len(),
            10
        );
    });
}

#[test]
fn the_closing_message_after_the_whole_content_length_is_taken_when_the_client_went_before_its_wake_up(
) {
    with_python(|py| {
        // Four bytes of a `length` promised went out; then the client read them and closed,
        // and the wake-up that tells the exchange has not come yet.
        let four_sent_then_gone = |length: &str| {
            let server = Arc::new(Fake::default());
            let ex = exchange(py, &server, None);
            let start = format!(
                "{{'type': 'http.response.start', 'status': 200, 'headers': [(b'content-length', b'{length}')]}}"
            );
            send(&ex, &start).unwrap();
            send(
                &ex,
                "{'type': 'http.response.body', 'body': b'true', 'more_body': True}",
            )
            .unwrap();
            server.gone.store(true, Ordering::Relaxed);
            (server, ex)
        };
        let (server, ex) = four_sent_then_gone("4");
        assert!(send(
            &ex,
            "{'type': 'http.response.body', 'body': b'', 'more_body': False}"
        )
        .unwrap());
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Complete]);
        // Bytes past the whole Content-Length are not taken: the client went.
        let (server, ex) = four_sent_then_gone("4");
        let err = error_of(send(
            &ex,
            "{'type': 'http.response.body', 'body': b'!', 'more_body': False}",
        ));
        assert!(err.contains("closed the connection"), "{err}");
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::Complete]);
        // A body short of its Content-Length, its client gone: the response is cut.
        let (server, ex) = four_sent_then_gone("8");
        let err = error_of(send(
            &ex,
            "{'type': 'http.response.body', 'body': b'', 'more_body': False}",
        ));
        assert!(err.contains("closed the connection"), "{err}");
        assert_eq!(*server.ended.lock().unwrap(), vec![HttpEnd::ClientGone]);
    });
}
