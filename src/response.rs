//! `start_response` and `write()`: the response head an app declares, validated per PEP 3333 and
//! RFC 9110 before anything reaches the wire.

use std::borrow::Cow;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::sync::Arc;

use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::accel::AccelHeaders;
use crate::chunk::Chunk;
use crate::sink::{ChunkSink, ClientGone};

/// The status and headers of a response, as the app gave them (validated).
///
/// The status line and every header live in one buffer (two allocations per response, not two
/// per header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// The app's `Content-Length`, if it set one.
    pub content_length: Option<u64>,
    /// The status line, then each header's name and value.
    text: Vec<u8>,
    status_len: usize,
    /// (start, name length, value length) of each header in `text`.
    fields: Vec<(u32, u32, u32)>,
}

impl ResponseHead {
    /// A head with status `status` and its line `NNN Reason` (latin-1 bytes), no headers yet;
    /// `room` is a hint of the header bytes to come.
    pub fn new(status: u16, status_line: &[u8], headers: usize, room: usize) -> ResponseHead {
        let mut text = Vec::with_capacity(status_line.len() + room);
        text.extend_from_slice(status_line);
        ResponseHead {
            status,
            content_length: None,
            text,
            status_len: status_line.len(),
            fields: Vec::with_capacity(headers),
        }
    }

    /// `NNN Reason`, exactly as the app wrote it (latin-1 bytes).
    pub fn status_line(&self) -> &[u8] {
        &self.text[..self.status_len]
    }

    /// Every header but `Content-Length`, in order, names as the app spelled them.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields.iter().map(|&(start, name, value)| {
            let (start, name, value) = (start as usize, name as usize, value as usize);
            (
                &self.text[start..start + name],
                &self.text[start + name..start + name + value],
            )
        })
    }

    /// Adds a header (already validated).
    pub fn push_header(&mut self, name: &[u8], value: &[u8]) {
        let start = self.text.len() as u32;
        self.text.extend_from_slice(name);
        self.text.extend_from_slice(value);
        self.fields
            .push((start, name.len() as u32, value.len() as u32));
    }

    /// The headers an internal redirect (`X-Accel-Redirect`) keeps: the app's others
    /// (`Set-Cookie`, `Content-Disposition`, ...), not those that described the body it did not
    /// send, nor the redirect itself.
    pub fn for_internal_redirect(&self) -> ResponseHead {
        self.without(&[
            b"x-accel-redirect",
            b"content-type",
            b"content-length",
            b"last-modified",
            b"etag",
            b"accept-ranges",
        ])
    }

    /// This head without the headers `drop` names (case-insensitive).
    fn without(&self, drop: &[&[u8]]) -> ResponseHead {
        let mut head = ResponseHead::new(
            self.status,
            self.status_line(),
            self.fields.len(),
            self.text.len(),
        );
        head.content_length = self.content_length;
        for (name, value) in self.headers() {
            if !drop.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                head.push_header(name, value);
            }
        }
        head
    }

    /// Whether this status never carries a body (1xx, 204, 304).
    pub fn is_bodiless(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The value of an `X-Accel-Redirect` (even an empty one, which the server refuses): the
    /// server answers from there instead, and the app's body is not used.
    pub fn internal_redirect(&self) -> Option<&[u8]> {
        self.header("X-Accel-Redirect")
    }
}

/// Headers an app must not send (PEP 3333: hop-by-hop features belong to the server).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// A `str` as latin-1 bytes, refusing code points above U+00FF (`what` names it in the error).
fn latin1_bytes(what: impl FnOnce() -> String, s: &str) -> Result<Cow<'_, [u8]>, String> {
    if s.is_ascii() {
        return Ok(Cow::Borrowed(s.as_bytes()));
    }
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Cow::Owned)
        .ok_or_else(|| format!("{} {s:?} has a character outside latin-1", what()))
}

/// Parses `NNN Reason`.
pub fn parse_status(status: &str) -> Result<(u16, Cow<'_, [u8]>), String> {
    let bytes = latin1_bytes(|| "status".into(), status)?;
    let well_formed = bytes.len() >= 5
        && bytes[..3].iter().all(u8::is_ascii_digit)
        && bytes[3] == b' '
        && bytes[4] != b' '
        && bytes.last() != Some(&b' ')
        && !bytes[4..].iter().any(|&c| is_ctl(c));
    if !well_formed {
        return Err(format!("status {status:?} is not \"NNN Reason-Phrase\""));
    }
    let code =
        (bytes[0] - b'0') as u16 * 100 + (bytes[1] - b'0') as u16 * 10 + (bytes[2] - b'0') as u16;
    if code < 200 {
        return Err(format!(
            "status {status:?}: a WSGI response cannot be informational (1xx) or below 100"
        ));
    }
    Ok((code, bytes))
}

fn is_ctl(c: u8) -> bool {
    (c < 0x20 && c != b'\t') || c == 0x7f
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Checks one header; returns it as latin-1 bytes.
pub fn parse_header<'a>(
    name: &'a str,
    value: &'a str,
) -> Result<(&'a [u8], Cow<'a, [u8]>), String> {
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(format!("header name {name:?} is not an HTTP token"));
    }
    if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return Err(format!(
            "header {name:?} is hop-by-hop; the server manages it (PEP 3333)"
        ));
    }
    let value_bytes = latin1_bytes(|| format!("header {name:?} value"), value)?;
    if value_bytes.iter().any(|&c| is_ctl(c)) {
        return Err(format!(
            "header {name:?} value {value:?} contains a control character (CR, LF, NUL, ...)"
        ));
    }
    Ok((name.as_bytes(), value_bytes))
}

/// Checks one header given as bytes (ASGI): the same rules as [`parse_header`].
pub fn check_header_bytes(name: &[u8], value: &[u8]) -> Result<(), String> {
    let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if name.is_empty() || !name.iter().all(|&c| is_token_char(c)) {
        return Err(format!(
            "header name {:?} is not an HTTP token",
            shown(name)
        ));
    }
    if HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
    {
        return Err(format!(
            "header {:?} is hop-by-hop; the server manages it",
            shown(name)
        ));
    }
    if value.iter().any(|&c| is_ctl(c)) {
        return Err(format!(
            "header {:?} value {:?} contains a control character (CR, LF, NUL, ...)",
            shown(name),
            shown(value)
        ));
    }
    Ok(())
}

/// Builds a head from the app's `status` and `headers` arguments, without the `ignored`
/// `X-Accel-*` headers (the server neither acts on them nor shows them to the client).
pub fn head_from_python(
    status: &Bound<'_, PyAny>,
    headers: &Bound<'_, PyAny>,
    ignored: AccelHeaders,
) -> PyResult<ResponseHead> {
    let status = status.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("status must be str, not {}", type_name(status)))
    })?;
    let status = status.to_cow()?;
    let (code, status_line) = parse_status(&status).map_err(PyValueError::new_err)?;
    let headers = headers.cast::<PyList>().map_err(|_| {
        PyTypeError::new_err(format!(
            "response headers must be a list, not {}",
            type_name(headers)
        ))
    })?;
    let mut head = ResponseHead::new(code, &status_line, headers.len(), 64 * headers.len());
    for item in headers.iter() {
        let pair = item
            .cast::<PyTuple>()
            .ok()
            .filter(|t| t.len() == 2)
            .ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "each header must be a (name, value) tuple, not {item:?}"
                ))
            })?;
        let name = pair.get_item(0)?;
        let value = pair.get_item(1)?;
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err(format!(
                "header name and value must be str: {item:?}"
            )));
        };
        let (name, value) = (name.to_cow()?, value.to_cow()?);
        let (name, value) = parse_header(&name, &value).map_err(PyValueError::new_err)?;
        if ignored.covers(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = crate::content_length::parse(&value).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "Content-Length {:?} is not a length (digits only, at most {})",
                    String::from_utf8_lossy(&value),
                    i64::MAX
                ))
            })?;
            if head.content_length.is_some_and(|l| l != length) {
                return Err(PyValueError::new_err(
                    "two different Content-Length headers",
                ));
            }
            head.content_length = Some(length);
            continue;
        }
        head.push_header(name, &value);
    }
    Ok(head)
}

/// The name of an object's type, for error messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

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
    /// The `X-Accel-*` headers the server is configured to ignore.
    ignored: AccelHeaders,
}

impl StartResponse {
    pub(crate) fn new(sink: Option<Arc<dyn ChunkSink>>, ignored: AccelHeaders) -> Self {
        StartResponse {
            sink,
            ignored,
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
        }
        Ok(())
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
        if data.is_empty() || head.internal_redirect().is_some() {
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

    fn check_live(&self) -> PyResult<()> {
        if self.finished {
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
            let mut this = slf.borrow_mut();
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
            this.head = Some(head_from_python(status, headers, this.ignored)?);
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

/// For `type/subtype; ...; charset=X`: the length of the value before the `;` that starts the
/// charset parameter, and the charset's (start, length) without quotes. nginx's header filter
/// writes them back as `type; charset=X`.
pub fn split_charset(value: &[u8]) -> (usize, Option<(usize, usize)>) {
    let mut i = 0;
    while let Some(semi) = value[i..].iter().position(|&c| c == b';').map(|p| p + i) {
        let mut p = semi + 1;
        while value.get(p) == Some(&b' ') {
            p += 1;
        }
        if value.len() >= p + 8 && value[p..p + 8].eq_ignore_ascii_case(b"charset=") {
            let mut start = p + 8;
            let mut end = value.len();
            if value.get(start) == Some(&b'"') {
                start += 1;
            }
            if end > start && value[end - 1] == b'"' {
                end -= 1;
            }
            return (semi, Some((start, end.saturating_sub(start))));
        }
        i = p;
    }
    (value.len(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("200 OK").unwrap(), (200, b"200 OK"[..].into()));
        assert_eq!(parse_status("599 Odd \u{e9}").unwrap().0, 599);
        for bad in [
            "200",
            "200 ",
            "OK 200",
            "2000 OK",
            " 200 OK",
            "200 OK ",
            "200  OK",
            "200 O\r\nX: y",
            "100 Continue",
            "099 Low",
            "200 \u{263a}",
        ] {
            assert!(parse_status(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn charset_parameter() {
        assert_eq!(split_charset(b"text/html"), (9, None));
        assert_eq!(
            split_charset(b"text/html; charset=utf-8"),
            (9, Some((19, 5)))
        );
        let v = b"multipart/mixed; boundary=x;charset=\"latin1\"";
        let (len, cs) = split_charset(v);
        assert_eq!(&v[..len], b"multipart/mixed; boundary=x");
        let (start, n) = cs.unwrap();
        assert_eq!(&v[start..start + n], b"latin1");
        assert_eq!(split_charset(b"text/plain; format=flowed"), (25, None));
    }

    #[test]
    fn header_rules() {
        assert_eq!(
            parse_header("X-A", "b\tc").unwrap(),
            (&b"X-A"[..], b"b\tc"[..].into())
        );
        assert_eq!(parse_header("X-L", "caf\u{e9}").unwrap().1, &b"caf\xe9"[..]);
        for (name, value) in [
            ("X A", "v"),
            ("", "v"),
            ("X:A", "v"),
            ("X-A", "a\r\nSet-Cookie: x"),
            ("X-A", "a\nb"),
            ("X-A", "a\0b"),
            ("X-A", "\u{20ac}"),
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
        ] {
            assert!(
                parse_header(name, value).is_err(),
                "{name:?}: {value:?} accepted"
            );
        }
    }
}
