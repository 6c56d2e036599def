//! The WSGI environ: what an adapter copies out of the server's request ([`RequestInfo`], built on
//! the server's thread) and the dict built from it on the Python thread.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::accel::AccelHeaders;
use crate::arena::{Arena, Span};
use crate::errors::ErrorStream;
use crate::file_wrapper::FileWrapper;

/// The CGI variables an adapter sets from its server's request; all are native strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RequestMethod,
    ScriptName,
    PathInfo,
    QueryString,
    ServerName,
    ServerPort,
    ServerProtocol,
    RemoteAddr,
    RemotePort,
    RequestUri,
}

const FIELD_COUNT: usize = 10;

/// Everything the environ needs, in memory the request task owns: one arena of bytes and ranges.
#[derive(Debug, Default)]
pub struct RequestInfo {
    arena: Arena,
    fields: [Span; FIELD_COUNT],
    content_type: Option<Span>,
    content_length: Option<Span>,
    /// (`HTTP_*` key, joined value)
    headers: Vec<(Span, Span)>,
    /// Extra environ entries (`wsgi_param`).
    params: Vec<(Span, Span)>,
    /// The server's id of the request, for log lines (not part of the environ).
    request_id: Span,
    https: bool,
    /// The app's `X-Accel-*` headers its location ignores (a response setting, carried here
    /// because this is what the request hands the core).
    ignored_accel: AccelHeaders,
}

impl RequestInfo {
    fn bytes(&self, span: Span) -> &[u8] {
        self.arena.get(span)
    }

    /// The value of one CGI field.
    pub fn field(&self, field: Field) -> &[u8] {
        self.bytes(self.fields[field as usize])
    }

    /// `CONTENT_LENGTH` when the request has one.
    pub fn content_length(&self) -> Option<&[u8]> {
        self.content_length.map(|s| self.bytes(s))
    }

    /// `CONTENT_TYPE` when the request has one.
    pub fn content_type(&self) -> Option<&[u8]> {
        self.content_type.map(|s| self.bytes(s))
    }

    /// The `HTTP_*` entries, in arrival order.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|&(k, v)| (self.bytes(k), self.bytes(v)))
    }

    /// The server's id of this request (for log lines).
    pub fn request_id(&self) -> &[u8] {
        self.bytes(self.request_id)
    }

    /// Whether the connection is TLS.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The `X-Accel-*` headers of the app's response that the server ignores.
    pub fn ignored_accel(&self) -> AccelHeaders {
        self.ignored_accel
    }

    /// `METHOD URI PROTOCOL`, for log lines.
    pub fn request_line(&self) -> String {
        format!(
            "{} {} {}",
            String::from_utf8_lossy(self.field(Field::RequestMethod)),
            String::from_utf8_lossy(self.field(Field::RequestUri)),
            String::from_utf8_lossy(self.field(Field::ServerProtocol)),
        )
    }

    /// Builds the environ dict for this request (the caller holds the GIL).
    pub fn to_environ<'py>(
        &self,
        py: Python<'py>,
        input: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let template = environ_template(py)?;
        // SAFETY: `template` is a live dict; PyDict_Copy returns a new reference or NULL with an
        // exception set, which `from_owned_ptr_or_err` turns into an error.
        let environ = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDict_Copy(template.as_ptr()))?
                .cast_into_unchecked::<PyDict>()
        };
        let keys = [
            intern!(py, "REQUEST_METHOD"),
            intern!(py, "SCRIPT_NAME"),
            intern!(py, "PATH_INFO"),
            intern!(py, "QUERY_STRING"),
            intern!(py, "SERVER_NAME"),
            intern!(py, "SERVER_PORT"),
            intern!(py, "SERVER_PROTOCOL"),
            intern!(py, "REMOTE_ADDR"),
            intern!(py, "REMOTE_PORT"),
            intern!(py, "REQUEST_URI"),
        ];
        let mut last = LAST_VALUES.lock().unwrap_or_else(|e| e.into_inner());
        for (i, (key, span)) in keys.iter().zip(self.fields.iter()).enumerate() {
            let bytes = self.bytes(*span);
            let value = match &last.0[i] {
                Some((text, value)) if REPEATING[i] && text == bytes => value.clone_ref(py),
                _ => {
                    let value = latin1(py, bytes)?.unbind();
                    if REPEATING[i] {
                        last.0[i] = Some((bytes.to_vec(), value.clone_ref(py)));
                    }
                    value
                }
            };
            environ.set_item(key, value)?;
        }
        drop(last);
        if let Some(span) = self.content_type {
            environ.set_item(intern!(py, "CONTENT_TYPE"), latin1(py, self.bytes(span))?)?;
        }
        if let Some(span) = self.content_length {
            environ.set_item(intern!(py, "CONTENT_LENGTH"), latin1(py, self.bytes(span))?)?;
        }
        for &(key, value) in &self.headers {
            environ.set_item(latin1(py, self.bytes(key))?, latin1(py, self.bytes(value))?)?;
        }
        for &(key, value) in &self.params {
            environ.set_item(latin1(py, self.bytes(key))?, latin1(py, self.bytes(value))?)?;
        }
        let scheme = if self.https {
            intern!(py, "https")
        } else {
            intern!(py, "http")
        };
        environ.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
        environ.set_item(intern!(py, "wsgi.input"), input)?;
        Ok(environ)
    }
}

/// The fields whose value usually repeats from one request to the next (method, mount point,
/// server name and port, protocol, client address): their last `str` is reused when the bytes
/// are the same, instead of making a new one per request. In `Field` order.
const REPEATING: [bool; FIELD_COUNT] = [
    true, true, false, false, true, true, true, true, false, false,
];

struct LastValues([Option<(Vec<u8>, Py<PyString>)>; FIELD_COUNT]);

/// Only touched with the GIL held (the mutex is never contended).
static LAST_VALUES: std::sync::Mutex<LastValues> =
    std::sync::Mutex::new(LastValues([const { None }; FIELD_COUNT]));

/// `SCRIPT_NAME` and `PATH_INFO` of a decoded request path under mount point `mount` (empty:
/// the app is mounted at the root). A path matches the mount only at a segment boundary.
pub fn split_mount<'a>(path: &'a [u8], mount: &[u8]) -> (&'a [u8], &'a [u8]) {
    let mounted = !mount.is_empty()
        && path.starts_with(mount)
        && matches!(path.get(mount.len()), None | Some(b'/'));
    if mounted {
        path.split_at(mount.len())
    } else {
        (&b""[..], path)
    }
}

/// A native string (PEP 3333): each byte becomes the code point of the same value.
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // SAFETY: the pointer and length describe `bytes`; latin-1 decoding cannot fail except on
    // memory exhaustion, which `from_owned_ptr_or_err` reports.
    unsafe {
        Ok(Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_DecodeLatin1(
                bytes.as_ptr().cast(),
                bytes.len() as ffi::Py_ssize_t,
                std::ptr::null(),
            ),
        )?
        .cast_into_unchecked())
    }
}

/// The entries every environ shares; copied per request, which is cheaper than inserting them.
fn environ_template(py: Python<'_>) -> PyResult<&Bound<'_, PyDict>> {
    static TEMPLATE: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    TEMPLATE
        .get_or_try_init(py, || -> PyResult<Py<PyDict>> {
            let d = PyDict::new(py);
            d.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
            d.set_item("wsgi.multithread", true)?;
            d.set_item("wsgi.multiprocess", true)?;
            d.set_item("wsgi.run_once", false)?;
            d.set_item("wsgi.input_terminated", true)?;
            d.set_item("wsgi.errors", Py::new(py, ErrorStream::default())?)?;
            d.set_item("wsgi.file_wrapper", py.get_type::<FileWrapper>())?;
            Ok(d.unbind())
        })
        .map(|d| d.bind(py))
}

/// Fills a [`RequestInfo`] from a server's request.
#[derive(Debug, Default)]
pub struct RequestInfoBuilder {
    info: RequestInfo,
}

impl RequestInfoBuilder {
    /// A builder whose arena starts with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut b = Self::default();
        b.info.arena.reserve(bytes);
        b
    }

    fn push(&mut self, bytes: &[u8]) -> Span {
        self.info.arena.push(bytes)
    }

    /// Sets one CGI field.
    pub fn set(&mut self, field: Field, value: &[u8]) -> &mut Self {
        self.info.fields[field as usize] = self.push(value);
        self
    }

    /// Sets the server's id of the request, shown in its log lines.
    pub fn request_id(&mut self, id: &[u8]) -> &mut Self {
        self.info.request_id = self.push(id);
        self
    }

    /// The app's `X-Accel-*` headers to ignore (`wsgi_ignore_headers`).
    pub fn ignore_accel(&mut self, headers: AccelHeaders) -> &mut Self {
        self.info.ignored_accel = headers;
        self
    }

    /// Marks the connection as TLS (`wsgi.url_scheme=https`).
    pub fn https(&mut self, on: bool) -> &mut Self {
        self.info.https = on;
        self
    }

    /// Adds one request header as the server parsed it. `Content-Type` and `Content-Length`
    /// become `CONTENT_TYPE`/`CONTENT_LENGTH`; a name with `_` is dropped (it would be
    /// indistinguishable from its `-` twin); repeats are joined with `, ` (`Cookie` with `; `).
    pub fn header(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        if name.is_empty() || name.contains(&b'_') {
            return self;
        }
        if name.eq_ignore_ascii_case(b"content-type") {
            self.info.content_type = Some(self.join(self.info.content_type, value, b", "));
            return self;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            self.info.content_length = Some(self.push(value));
            return self;
        }
        let key_start = self.info.arena.mark();
        self.info.arena.extend_from_slice(b"HTTP_");
        self.info.arena.extend(name.iter().map(|&c| match c {
            b'-' => b'_',
            c => c.to_ascii_uppercase(),
        }));
        let key = self.info.arena.since(key_start);
        let existing =
            self.info.headers.iter().position(|&(k, _)| {
                k.len() == key.len() && self.info.bytes(k) == self.info.bytes(key)
            });
        match existing {
            Some(i) => {
                // The duplicate key is not needed; drop it from the arena again.
                self.info.arena.truncate(key_start);
                let sep: &[u8] = if name.eq_ignore_ascii_case(b"cookie") {
                    b"; "
                } else {
                    b", "
                };
                let joined = self.join(Some(self.info.headers[i].1), value, sep);
                self.info.headers[i].1 = joined;
            }
            None => {
                let value = self.push(value);
                self.info.headers.push((key, value));
            }
        }
        self
    }

    fn join(&mut self, old: Option<Span>, value: &[u8], sep: &[u8]) -> Span {
        match old {
            None => self.push(value),
            Some(old) => {
                let start = self.info.arena.mark();
                self.info.arena.extend_from_span(old);
                self.info.arena.extend_from_slice(sep);
                self.info.arena.extend_from_slice(value);
                self.info.arena.since(start)
            }
        }
    }

    /// For a body that arrived without a length (chunked, or HTTP/2 without `content-length`):
    /// presents it with its real `CONTENT_LENGTH` and without `HTTP_TRANSFER_ENCODING`, since the
    /// server has already de-chunked it.
    pub fn body_length(&mut self, len: u64) -> &mut Self {
        let text = len.to_string();
        self.info.content_length = Some(self.push(text.as_bytes()));
        let arena = &self.info.arena;
        self.info
            .headers
            .retain(|&(k, _)| arena.get(k) != b"HTTP_TRANSFER_ENCODING");
        self
    }

    /// Adds an extra environ entry (set after the request's own, so it can override them).
    pub fn param(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        let k = self.push(name);
        let v = self.push(value);
        self.info.params.push((k, v));
        self
    }

    pub fn finish(self) -> RequestInfo {
        self.info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    fn sample() -> RequestInfo {
        let mut b = RequestInfoBuilder::with_capacity(256);
        b.set(Field::RequestMethod, b"POST")
            .set(Field::ScriptName, b"/mount")
            .set(Field::PathInfo, b"/caf\xc3\xa9")
            .set(Field::QueryString, b"a=1&b=%20")
            .set(Field::ServerName, b"example.org")
            .set(Field::ServerPort, b"8080")
            .set(Field::ServerProtocol, b"HTTP/1.1")
            .set(Field::RemoteAddr, b"127.0.0.1")
            .set(Field::RemotePort, b"50000")
            .set(Field::RequestUri, b"/mount/caf%C3%A9?a=1&b=%20")
            .header(b"Host", b"example.org:8080")
            .header(b"Content-Type", b"text/plain")
            .header(b"Content-Length", b"5")
            .header(b"X-Forwarded-For", b"1.1.1.1")
            .header(b"x-forwarded-for", b"2.2.2.2")
            .header(b"Cookie", b"a=1")
            .header(b"Cookie", b"b=2")
            .header(b"X_Evil", b"spoof")
            .header(b"Accept", b"*/*");
        b.finish()
    }

    #[test]
    fn maps_headers_per_cgi_rules() {
        let info = sample();
        let headers: Vec<_> = info.headers().collect();
        assert_eq!(
            headers,
            vec![
                (&b"HTTP_HOST"[..], &b"example.org:8080"[..]),
                (b"HTTP_X_FORWARDED_FOR", b"1.1.1.1, 2.2.2.2"),
                (b"HTTP_COOKIE", b"a=1; b=2"),
                (b"HTTP_ACCEPT", b"*/*"),
            ]
        );
        assert_eq!(info.content_type(), Some(&b"text/plain"[..]));
        assert_eq!(info.content_length(), Some(&b"5"[..]));
        assert_eq!(
            info.request_line(),
            "POST /mount/caf%C3%A9?a=1&b=%20 HTTP/1.1"
        );
    }

    #[test]
    fn dechunked_body_gets_a_length_and_loses_transfer_encoding() {
        let mut b = RequestInfoBuilder::default();
        b.header(b"Transfer-Encoding", b"chunked")
            .header(b"Accept", b"*/*");
        b.body_length(42);
        let info = b.finish();
        assert_eq!(info.content_length(), Some(&b"42"[..]));
        assert_eq!(
            info.headers().map(|(k, _)| k).collect::<Vec<_>>(),
            vec![&b"HTTP_ACCEPT"[..]]
        );
    }

    #[test]
    fn repeating_values_are_reused_only_when_equal() {
        with_python(|py| {
            let build = |method: &[u8], path: &[u8]| {
                let mut b = RequestInfoBuilder::default();
                b.set(Field::RequestMethod, method)
                    .set(Field::PathInfo, path);
                b.finish().to_environ(py, py.None().into_bound(py)).unwrap()
            };
            let (a, b) = (build(b"GET", b"/a"), build(b"GET", b"/a"));
            fn method<'py>(e: &Bound<'py, PyDict>) -> Bound<'py, PyAny> {
                e.get_item("REQUEST_METHOD").unwrap().unwrap()
            }
            fn path<'py>(e: &Bound<'py, PyDict>) -> Bound<'py, PyAny> {
                e.get_item("PATH_INFO").unwrap().unwrap()
            }
            assert!(method(&a).is(method(&b)), "the same method is one str");
            assert!(!path(&a).is(path(&b)), "paths are made per request");
            let c = build(b"POST", b"/a");
            assert_eq!(method(&c).extract::<String>().unwrap(), "POST");
            assert_eq!(method(&a).extract::<String>().unwrap(), "GET");
        });
    }

    #[test]
    fn environ_has_native_strings_and_wsgi_keys() {
        with_python(|py| {
            let info = sample();
            let environ = info.to_environ(py, py.None().into_bound(py)).unwrap();
            let get =
                |k: &str| -> String { environ.get_item(k).unwrap().unwrap().extract().unwrap() };
            assert_eq!(get("PATH_INFO"), "/caf\u{c3}\u{a9}");
            assert_eq!(get("SCRIPT_NAME"), "/mount");
            assert_eq!(get("CONTENT_TYPE"), "text/plain");
            assert_eq!(get("HTTP_COOKIE"), "a=1; b=2");
            assert_eq!(get("wsgi.url_scheme"), "http");
            assert!(environ.get_item("HTTP_CONTENT_TYPE").unwrap().is_none());
            assert!(environ.get_item("HTTP_X_EVIL").unwrap().is_none());
            let version: (i32, i32) = environ
                .get_item("wsgi.version")
                .unwrap()
                .unwrap()
                .extract()
                .unwrap();
            assert_eq!(version, (1, 0));
            for key in [
                "wsgi.multithread",
                "wsgi.multiprocess",
                "wsgi.input_terminated",
            ] {
                assert!(environ
                    .get_item(key)
                    .unwrap()
                    .unwrap()
                    .extract::<bool>()
                    .unwrap());
            }
            assert!(!environ
                .get_item("wsgi.run_once")
                .unwrap()
                .unwrap()
                .extract::<bool>()
                .unwrap());
        });
    }
}
