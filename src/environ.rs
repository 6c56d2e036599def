//! The WSGI environ: what an adapter copies out of the server's request ([`RequestInfo`], built on
//! the server's thread) and the dict built from it on the Python thread.

use std::collections::HashMap;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::accel::AccelHeaders;
use crate::arena::{Arena, Span};
use crate::errors::ErrorStream;
use crate::file_wrapper::FileWrapper;
use crate::intercepted::InterceptedStatuses;

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
    /// Where the request's log entries go (see [`crate::server_log::routed`]).
    log_route: usize,
    https: bool,
    /// The app's `X-Accel-*` headers its location ignores (a response setting, carried here
    /// because this is what the request hands the core).
    ignored_accel: AccelHeaders,
    /// The statuses the server answers itself in the app's place (a response setting too).
    intercepted: InterceptedStatuses,
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

    /// Where this request's log entries go (see [`crate::server_log::routed`]).
    pub fn log_route(&self) -> usize {
        self.log_route
    }

    /// The `X-Accel-*` headers of the app's response that the server ignores.
    pub fn ignored_accel(&self) -> AccelHeaders {
        self.ignored_accel
    }

    pub fn intercepted(&self) -> InterceptedStatuses {
        self.intercepted
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
        if self.https {
            // CGI's mark of a TLS request (Apache's mod_ssl sets it, `uwsgi_params` passes it),
            // which older apps read instead of `wsgi.url_scheme`; a `wsgi_param` may override it.
            environ.set_item(intern!(py, "HTTPS"), intern!(py, "on"))?;
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
    /// Values of repeated headers, joined onto their first one at the end: joining each on its
    /// arrival would copy the value so far every time, quadratic in the repeats (32,000 empty
    /// headers fit one small HTTP/2 request).
    repeats: Vec<Repeat>,
    /// `HTTP_*` key → its index in `info.headers`, once there are many (a scan per header is
    /// then quadratic in them).
    index: Option<HashMap<Box<[u8]>, usize>>,
}

/// A repeated header's value, waiting to be joined.
#[derive(Debug, Clone, Copy)]
struct Repeat {
    of: Joined,
    value: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Joined {
    ContentType,
    Header(usize),
}

/// Up to this many distinct headers, finding a repeat's first by a scan is cheaper than hashing.
const SCANNED_HEADERS: usize = 32;

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

    /// Sets where the request's log entries go (see [`crate::server_log::routed`]).
    pub fn log_route(&mut self, route: usize) -> &mut Self {
        self.info.log_route = route;
        self
    }

    /// The app's `X-Accel-*` headers to ignore (`wsgi_ignore_headers`).
    pub fn ignore_accel(&mut self, headers: AccelHeaders) -> &mut Self {
        self.info.ignored_accel = headers;
        self
    }

    pub fn intercept(&mut self, statuses: InterceptedStatuses) -> &mut Self {
        self.info.intercepted = statuses;
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
            let value = self.push(value);
            match self.info.content_type {
                None => self.info.content_type = Some(value),
                Some(_) => self.repeats.push(Repeat {
                    of: Joined::ContentType,
                    value,
                }),
            }
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
        match self.find(key) {
            Some(i) => {
                // The duplicate key is not needed; drop it from the arena again.
                self.info.arena.truncate(key_start);
                let value = self.push(value);
                self.repeats.push(Repeat {
                    of: Joined::Header(i),
                    value,
                });
            }
            None => {
                let value = self.push(value);
                self.info.headers.push((key, value));
                let count = self.info.headers.len();
                if let Some(index) = &mut self.index {
                    index.insert(self.info.arena.get(key).into(), count - 1);
                } else if count > SCANNED_HEADERS {
                    let arena = &self.info.arena;
                    let headers = self.info.headers.iter().enumerate();
                    self.index = Some(
                        headers
                            .map(|(i, &(k, _))| (arena.get(k).into(), i))
                            .collect(),
                    );
                }
            }
        }
        self
    }

    /// The index of the header with this `HTTP_*` key, if one came already.
    fn find(&self, key: Span) -> Option<usize> {
        let arena = &self.info.arena;
        match &self.index {
            Some(index) => index.get(arena.get(key)).copied(),
            None => self
                .info
                .headers
                .iter()
                .position(|&(k, _)| k.len() == key.len() && arena.get(k) == arena.get(key)),
        }
    }

    /// Joins each repeated header's values onto its first, in arrival order, with `, ` (`Cookie`
    /// with `; `): one copy of each joined value.
    fn join_repeats(&mut self) {
        let mut repeats = std::mem::take(&mut self.repeats);
        // Stable: each header's values keep their order.
        repeats.sort_by_key(|r| r.of);
        for group in repeats.chunk_by(|a, b| a.of == b.of) {
            let of = group[0].of;
            let (first, sep): (Span, &[u8]) = match of {
                Joined::ContentType => (self.info.content_type.unwrap_or_default(), b", "),
                Joined::Header(i) => {
                    let (key, value) = self.info.headers[i];
                    let cookie = self.info.arena.get(key) == b"HTTP_COOKIE";
                    (value, if cookie { b"; " } else { b", " })
                }
            };
            let arena = &mut self.info.arena;
            let start = arena.mark();
            arena.extend_from_span(first);
            for repeat in group {
                arena.extend_from_slice(sep);
                arena.extend_from_span(repeat.value);
            }
            let joined = arena.since(start);
            match of {
                Joined::ContentType => self.info.content_type = Some(joined),
                Joined::Header(i) => self.info.headers[i].1 = joined,
            }
        }
    }

    /// For a body that arrived without a length (chunked, or HTTP/2 without `content-length`):
    /// presents it with its real `CONTENT_LENGTH` and without `HTTP_TRANSFER_ENCODING`, since the
    /// server has already de-chunked it.
    pub fn body_length(&mut self, len: u64) -> &mut Self {
        let text = len.to_string();
        self.info.content_length = Some(self.push(text.as_bytes()));
        // Removing a header moves the others' indices, which the repeats and the index hold.
        self.join_repeats();
        self.index = None;
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

    pub fn finish(mut self) -> RequestInfo {
        self.join_repeats();
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
    fn repeats_are_joined_in_order_with_memory_linear_in_them() {
        let mut b = RequestInfoBuilder::default();
        let mut sent = 0;
        for i in 0..20_000 {
            // Many distinct names too: the index takes over from the scan.
            let name = format!("X-{}", i % 500);
            let value = format!("{i}");
            sent += name.len() + value.len();
            b.header(name.as_bytes(), value.as_bytes());
            b.header(b"Cookie", b"c=1");
            b.header(b"Content-Type", b"t");
            sent += 6 + 3 + 12 + 1;
        }
        let info = b.finish();
        // Each value once as it came, once joined, with its separator; keys once.
        assert!(
            info.arena.mark() < 3 * sent,
            "{} bytes for {sent}",
            info.arena.mark()
        );
        let headers: Vec<_> = info.headers().collect();
        assert_eq!(headers.len(), 501);
        assert_eq!(headers[0].0, b"HTTP_X_0");
        let expected: Vec<String> = (0..40).map(|k| (k * 500).to_string()).collect();
        assert_eq!(headers[0].1, expected.join(", ").as_bytes());
        assert_eq!(headers[1].0, b"HTTP_COOKIE");
        assert_eq!(headers[1].1, vec!["c=1"; 20_000].join("; ").as_bytes());
        assert_eq!(headers[500].0, b"HTTP_X_499");
        assert_eq!(
            info.content_type(),
            Some(vec!["t"; 20_000].join(", ").as_bytes())
        );
    }

    #[test]
    fn repeats_before_a_dechunked_length_stay_with_their_header() {
        let mut b = RequestInfoBuilder::default();
        b.header(b"Accept", b"a")
            .header(b"Transfer-Encoding", b"chunked")
            .header(b"X-Y", b"1")
            .header(b"x-y", b"2");
        b.body_length(7);
        b.header(b"X-Y", b"3");
        let info = b.finish();
        assert_eq!(
            info.headers().collect::<Vec<_>>(),
            vec![(&b"HTTP_ACCEPT"[..], &b"a"[..]), (b"HTTP_X_Y", b"1, 2, 3")]
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
