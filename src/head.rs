//! The response head an app declares (status and headers), validated per PEP 3333 and RFC 9110
//! before anything reaches the wire; the servers read it (status line, headers, the charset
//! nginx wants apart, an internal redirect).

use std::borrow::Cow;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::accel::AccelHeaders;

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
    /// The server answers this status itself (its `error_page`), in the app's place: the app's
    /// body is not used (see [`crate::intercepted`]).
    pub answered_by_server: bool,
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
            answered_by_server: false,
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

    /// Adds a header (already validated), without spaces or tabs around its value: they are
    /// no part of it (RFC 9110 5.5), and over HTTP/2 a value with them makes the response
    /// malformed (RFC 9113 8.2.1: clients reset the stream), as gunicorn and nginx's proxy
    /// strip them.
    pub fn push_header(&mut self, name: &[u8], value: &[u8]) {
        // Validated values hold no other ASCII whitespace than spaces and tabs.
        let value = value.trim_ascii();
        let start = self.text.len() as u32;
        self.text.extend_from_slice(name);
        self.text.extend_from_slice(value);
        self.fields
            .push((start, name.len() as u32, value.len() as u32));
    }

    /// The headers an internal redirect (`X-Accel-Redirect`) keeps under a server with no
    /// convention of its own (Apache): the app's others (`Set-Cookie`, `Content-Disposition`,
    /// ...), not those that described the body it did not send, nor the redirect itself.
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

    /// This head with only the headers `keep` names (case-insensitive).
    pub fn keeping(&self, keep: &[&[u8]]) -> ResponseHead {
        self.filtered(|name| keep.iter().any(|k| name.eq_ignore_ascii_case(k)))
    }

    /// This head without the headers `drop` names (case-insensitive).
    fn without(&self, drop: &[&[u8]]) -> ResponseHead {
        self.filtered(|name| !drop.iter().any(|d| name.eq_ignore_ascii_case(d)))
    }

    fn filtered(&self, kept: impl Fn(&[u8]) -> bool) -> ResponseHead {
        let mut head = ResponseHead::new(
            self.status,
            self.status_line(),
            self.fields.len(),
            self.text.len(),
        );
        head.content_length = self.content_length;
        head.answered_by_server = self.answered_by_server;
        for (name, value) in self.headers() {
            if kept(name) {
                head.push_header(name, value);
            }
        }
        head
    }

    /// Whether this status never carries a body (1xx, 204, 304).
    pub fn is_bodiless(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }

    /// Whether this is a server-sent event stream (`content-type: text/event-stream`).
    pub fn is_event_stream(&self) -> bool {
        const TYPE: &[u8] = b"text/event-stream";
        self.header("content-type")
            .is_some_and(|v| v.len() >= TYPE.len() && v[..TYPE.len()].eq_ignore_ascii_case(TYPE))
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

    /// Whether the server answers in the app's place (an internal redirect, or its own page for
    /// the status): the app's body is dropped as it comes, never streamed.
    pub fn body_unused(&self) -> bool {
        self.answered_by_server || self.internal_redirect().is_some()
    }
}

/// The connection's headers, which PEP 3333 forbids (hop-by-hop) and ASGI allows: the server
/// drops them from either kind of app, as gunicorn drops them from an app's response and nginx
/// the first three from a proxied one. The framing, the connection and its protocol are the
/// server's (nginx answers upgrades itself, and on HTTP/2 a response with one of them is
/// malformed, RFC 9113 8.2.2, `Proxy-Connection` included). Server-sent event examples send
/// `Connection: keep-alive`, sse-starlette `connection: keep-alive`, and an app that passes on
/// the headers of a response it fetched sends `Transfer-Encoding`.
const CONNECTION_HEADERS: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailers",
    "upgrade",
    "proxy-connection",
];

/// Whether an app's header is one of the connection's, which the server drops (see
/// [`CONNECTION_HEADERS`]).
pub fn is_connection_header(name: &[u8]) -> bool {
    CONNECTION_HEADERS
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// PEP 3333's other hop-by-hop headers, which a WSGI app must not send (a 500). An ASGI app's go
/// out, as from uvicorn or nginx's proxy (an app's 407).
const PROXY_HOP_BY_HOP: [&str; 2] = ["proxy-authenticate", "proxy-authorization"];

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
    if PROXY_HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
    {
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

/// Checks one header given as bytes (ASGI): the same rules as [`parse_header`] but for the
/// hop-by-hop headers, which ASGI allows (see [`CONNECTION_HEADERS`]).
pub fn check_header_bytes(name: &[u8], value: &[u8]) -> Result<(), String> {
    let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if name.is_empty() || !name.iter().all(|&c| is_token_char(c)) {
        return Err(format!(
            "header name {:?} is not an HTTP token",
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
        if ignored.covers(name) || is_connection_header(name) {
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
    fn values_lose_surrounding_whitespace() {
        let mut head = ResponseHead::new(200, b"200 OK", 3, 64);
        head.push_header(b"X-A", b" \tb c\t ");
        head.push_header(b"X-B", b"   ");
        head.push_header(b"X-C", b"d");
        let headers: Vec<_> = head.headers().collect();
        assert_eq!(
            headers,
            [(&b"X-A"[..], &b"b c"[..]), (b"X-B", b""), (b"X-C", b"d")]
        );
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
            ("Connection", "a\r\nb"),
            ("Proxy-Authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
        ] {
            assert!(
                parse_header(name, value).is_err(),
                "{name:?}: {value:?} accepted"
            );
        }
    }
}
