//! The HTTP connection scope: what a server copies out of its parsed request (on its own
//! thread), and the dict the app gets (built on the event loop's thread).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::arena::{Arena, Span};

/// The `asgi` entry of every scope: ASGI 3.0, and the HTTP spec version the server states.
/// It does what 2.4 adds (`send()` raises an `OSError` once the client is gone) but says 2.3,
/// as uvicorn and Granian do: told 2.4, Starlette's StreamingResponse stops watching
/// `receive()` for `http.disconnect`, and an event stream idle between events would learn of
/// its client's going only at its next event, holding its task (and subscriptions) until then.
pub const ASGI_VERSION: &str = "3.0";
pub const HTTP_SPEC_VERSION: &str = "2.3";

/// The scope's byte strings, each a range of [`HttpScope`]'s arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeField {
    Method,
    /// The decoded path, location prefix included (the server's normalised URI).
    Path,
    /// The request target as the client sent it (query string included): `raw_path` is its
    /// path, and log lines show it whole.
    Target,
    QueryString,
    /// The location prefix, without its trailing slash (empty at the root).
    RootPath,
    ClientHost,
    ServerHost,
    /// The server's id of the request, for log lines (not part of the scope).
    RequestId,
    /// `raw_path` when it is not the target's path: the server changed the URI (a rewrite, an
    /// internal redirect) and gives the new one, escaped (empty: the target's).
    ChangedRawPath,
}

const FIELD_COUNT: usize = 9;

/// One request's scope, in memory the request owns: every byte string in one arena (made on the
/// server's thread, freed on the loop's) and each header's place in a second vector.
#[derive(Debug, Default, Clone)]
pub struct HttpScope {
    /// `1.0`, `1.1`, `2` or `3`.
    pub http_version: &'static str,
    pub https: bool,
    /// A WebSocket handshake: the scope is a `websocket` one.
    pub websocket: bool,
    arena: Arena,
    fields: [Span; FIELD_COUNT],
    /// The client's port; None on a unix socket, where ASGI's `client` is None.
    client_port: Option<u16>,
    /// Whether `server` is known, and its port: None on a unix socket (`[path, None]`).
    server_port: Option<Option<u16>>,
    /// Each header's name and value.
    headers: Vec<(Span, Span)>,
    /// `Sec-WebSocket-Protocol`'s values, in order (WebSocket scopes only).
    pub subprotocols: Vec<String>,
    /// `http.response.pathsend` is not offered (the server's configuration turned it off).
    pub no_pathsend: bool,
    /// Where the request's log entries go (see [`crate::server_log::routed`]).
    pub log_route: usize,
}

/// Fills an [`HttpScope`] from a server's request.
#[derive(Debug, Default)]
pub struct HttpScopeBuilder {
    scope: HttpScope,
}

impl HttpScopeBuilder {
    /// A builder whose arena has room for `bytes` bytes and `headers` headers.
    pub fn with_capacity(bytes: usize, headers: usize) -> HttpScopeBuilder {
        let mut b = HttpScopeBuilder::default();
        b.scope.arena.reserve(bytes);
        b.scope.headers.reserve_exact(headers);
        b
    }

    pub fn set(&mut self, field: ScopeField, value: &[u8]) -> &mut Self {
        self.scope.fields[field as usize] = self.scope.arena.push(value);
        self
    }

    pub fn http_version(&mut self, version: &'static str) -> &mut Self {
        self.scope.http_version = version;
        self
    }

    pub fn https(&mut self, on: bool) -> &mut Self {
        self.scope.https = on;
        self
    }

    /// Whether an HTTP scope offers `http.response.pathsend` (it does unless told not to).
    pub fn pathsend(&mut self, offered: bool) -> &mut Self {
        self.scope.no_pathsend = !offered;
        self
    }

    /// Where the request's log entries go (see [`crate::server_log::routed`]).
    pub fn log_route(&mut self, route: usize) -> &mut Self {
        self.scope.log_route = route;
        self
    }

    /// The client's address (as log lines show it) and port (None on a unix socket).
    pub fn client(&mut self, host: &[u8], port: Option<u16>) -> &mut Self {
        self.set(ScopeField::ClientHost, host);
        self.scope.client_port = port;
        self
    }

    /// The listening address and port, or a unix socket's path and None.
    pub fn server(&mut self, host: &[u8], port: Option<u16>) -> &mut Self {
        self.set(ScopeField::ServerHost, host);
        self.scope.server_port = Some(port);
        self
    }

    /// Adds a header, its name lowercased as ASGI gives it, in arrival order, repeats kept.
    pub fn header(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        let start = self.scope.arena.mark();
        self.scope
            .arena
            .extend(name.iter().map(u8::to_ascii_lowercase));
        let name = self.scope.arena.since(start);
        let value = self.scope.arena.push(value);
        self.scope.headers.push((name, value));
        self
    }

    pub fn build(self) -> HttpScope {
        self.scope
    }
}

impl HttpScope {
    /// A builder with room for a typical request.
    pub fn builder() -> HttpScopeBuilder {
        HttpScopeBuilder::with_capacity(1024, 16)
    }

    /// One of the scope's byte strings (empty when the server did not set it).
    pub fn field(&self, field: ScopeField) -> &[u8] {
        self.arena.get(self.fields[field as usize])
    }

    pub fn method(&self) -> &[u8] {
        self.field(ScopeField::Method)
    }

    /// The request target's path (up to its `?`), as the client sent it, or the URI the server
    /// changed it to.
    pub fn raw_path(&self) -> &[u8] {
        match self.field(ScopeField::ChangedRawPath) {
            b"" => raw_path_of(self.field(ScopeField::Target)),
            changed => changed,
        }
    }

    /// The server's id of the request (empty without one).
    pub fn request_id(&self) -> &[u8] {
        self.field(ScopeField::RequestId)
    }

    /// ASGI's `client`: host and port, None when there is no port (a unix socket).
    pub fn client(&self) -> Option<(&[u8], u16)> {
        self.client_port
            .map(|port| (self.field(ScopeField::ClientHost), port))
    }

    /// ASGI's `server`: host and port, or a unix socket's path and None.
    pub fn server(&self) -> Option<(&[u8], Option<u16>)> {
        self.server_port
            .map(|port| (self.field(ScopeField::ServerHost), port))
    }

    /// Each header's name and value, in arrival order.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|&(name, value)| (self.arena.get(name), self.arena.get(value)))
    }

    /// `METHOD TARGET PROTOCOL` as received, for log lines.
    pub fn request_line(&self) -> String {
        let protocol = match self.http_version {
            "1.0" => "HTTP/1.0",
            "2" => "HTTP/2.0",
            "3" => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        format!(
            "{} {} {protocol}",
            String::from_utf8_lossy(self.method()),
            String::from_utf8_lossy(self.field(ScopeField::Target)),
        )
    }

    /// `, request_id: ID` for log lines (empty without an id).
    pub fn log_suffix(&self) -> String {
        if self.request_id().is_empty() {
            String::new()
        } else {
            format!(
                ", request_id: {}",
                String::from_utf8_lossy(self.request_id())
            )
        }
    }

    /// `client: ADDR` for log lines.
    pub fn client_text(&self) -> String {
        String::from_utf8_lossy(self.field(ScopeField::ClientHost)).into_owned()
    }

    /// The scope dict; `state` is the app's lifespan state, shallow-copied into the scope.
    pub fn to_dict<'py>(
        &self,
        py: Python<'py>,
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        // The constant values are interned: each request would otherwise make its own strings.
        use pyo3::intern;
        let scope = PyDict::new(py);
        let kind = if self.websocket {
            intern!(py, "websocket")
        } else {
            intern!(py, "http")
        };
        scope.set_item(intern!(py, "type"), kind)?;
        let asgi = PyDict::new(py);
        asgi.set_item(intern!(py, "version"), intern!(py, ASGI_VERSION))?;
        asgi.set_item(intern!(py, "spec_version"), intern!(py, HTTP_SPEC_VERSION))?;
        scope.set_item(intern!(py, "asgi"), asgi)?;
        let version = match self.http_version {
            "1.0" => intern!(py, "1.0"),
            "2" => intern!(py, "2"),
            "3" => intern!(py, "3"),
            _ => intern!(py, "1.1"),
        };
        scope.set_item(intern!(py, "http_version"), version)?;
        if !self.websocket {
            let method = match self.method() {
                b"GET" => intern!(py, "GET").clone(),
                b"POST" => intern!(py, "POST").clone(),
                b"HEAD" => intern!(py, "HEAD").clone(),
                b"PUT" => intern!(py, "PUT").clone(),
                b"DELETE" => intern!(py, "DELETE").clone(),
                b"PATCH" => intern!(py, "PATCH").clone(),
                b"OPTIONS" => intern!(py, "OPTIONS").clone(),
                other => crate::environ::latin1(py, other)?,
            };
            scope.set_item(intern!(py, "method"), method)?;
        } else {
            scope.set_item(
                intern!(py, "subprotocols"),
                pyo3::types::PyList::new(py, &self.subprotocols)?,
            )?;
        }
        let scheme = match (self.websocket, self.https) {
            (false, false) => intern!(py, "http"),
            (false, true) => intern!(py, "https"),
            (true, false) => intern!(py, "ws"),
            (true, true) => intern!(py, "wss"),
        };
        scope.set_item(intern!(py, "scheme"), scheme)?;
        scope.set_item(
            intern!(py, "path"),
            utf8_lossy(py, self.field(ScopeField::Path))?,
        )?;
        scope.set_item(intern!(py, "raw_path"), PyBytes::new(py, self.raw_path()))?;
        scope.set_item(
            intern!(py, "query_string"),
            PyBytes::new(py, self.field(ScopeField::QueryString)),
        )?;
        scope.set_item(
            intern!(py, "root_path"),
            utf8_lossy(py, self.field(ScopeField::RootPath))?,
        )?;
        let headers = PyList::new(
            py,
            self.headers()
                .map(|(name, value)| (PyBytes::new(py, name), PyBytes::new(py, value))),
        )?;
        scope.set_item(intern!(py, "headers"), headers)?;
        for (key, addr) in [
            (
                intern!(py, "client"),
                self.client().map(|(host, port)| (host, Some(port))),
            ),
            (intern!(py, "server"), self.server()),
        ] {
            match addr {
                Some((host, port)) => scope.set_item(
                    key,
                    PyTuple::new(
                        py,
                        [
                            crate::environ::latin1(py, host)?.into_any(),
                            port.into_pyobject(py)?.into_any(),
                        ],
                    )?,
                )?,
                None => scope.set_item(key, py.None())?,
            }
        }
        let extensions = PyDict::new(py);
        if self.websocket {
            extensions.set_item(intern!(py, "websocket.http.response"), PyDict::new(py))?;
        } else if !self.no_pathsend {
            extensions.set_item(intern!(py, "http.response.pathsend"), PyDict::new(py))?;
        }
        scope.set_item(intern!(py, "extensions"), extensions)?;
        if let Some(state) = state {
            scope.set_item(intern!(py, "state"), state.copy()?)?;
        }
        Ok(scope)
    }
}

impl HttpScope {
    /// The first value of request header `name` (lowercase).
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Makes this a `websocket` scope (its subprotocols from the request).
    pub fn into_websocket(mut self) -> HttpScope {
        self.websocket = true;
        self.subprotocols = self
            .headers()
            .filter(|(n, _)| *n == b"sec-websocket-protocol")
            .flat_map(|(_, v)| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        self
    }
}

/// `bytes` as UTF-8, each invalid sequence replaced by U+FFFD (Python's `errors="replace"`, what
/// uvicorn's `unquote` gives), in one pass.
fn utf8_lossy<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // SAFETY: the pointer and length describe `bytes`; the error handler's name is a C string;
    // with "replace" decoding fails only on memory exhaustion, reported by `from_owned_ptr_or_err`.
    unsafe {
        Ok(Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyUnicode_DecodeUTF8(
                bytes.as_ptr().cast(),
                bytes.len() as pyo3::ffi::Py_ssize_t,
                c"replace".as_ptr(),
            ),
        )?
        .cast_into_unchecked())
    }
}

/// The path of a request target (up to its `?`, or a `#` a client sent, which nginx's path
/// leaves out too).
pub fn raw_path_of(target: &[u8]) -> &[u8] {
    match target.iter().position(|&c| c == b'?' || c == b'#') {
        Some(q) => &target[..q],
        None => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    #[test]
    fn scope_dict_has_the_spec_keys_and_types() {
        let mut b = HttpScope::builder();
        b.http_version("1.1")
            .https(true)
            .set(ScopeField::Method, b"POST")
            .set(ScopeField::Path, "/mount/caf\u{e9}".as_bytes())
            .set(ScopeField::Target, b"/mount/caf%C3%A9?a=1")
            .set(ScopeField::QueryString, b"a=1")
            .set(ScopeField::RootPath, b"/mount")
            .header(b"Host", b"x")
            .header(b"X-A", b"1")
            .header(b"x-a", b"2")
            .client(b"127.0.0.1", Some(5000))
            .server(b"127.0.0.1", Some(80));
        let scope = b.build();
        assert_eq!(scope.request_line(), "POST /mount/caf%C3%A9?a=1 HTTP/1.1");
        assert_eq!(scope.log_suffix(), "");
        assert_eq!(scope.header(b"x-a"), Some(&b"1"[..]));
        with_python(|py| {
            let state = PyDict::new(py);
            state.set_item("db", 1).unwrap();
            let d = scope.to_dict(py, Some(&state)).unwrap();
            let get = |k: &str| d.get_item(k).unwrap().unwrap();
            assert_eq!(get("type").extract::<String>().unwrap(), "http");
            assert_eq!(get("path").extract::<String>().unwrap(), "/mount/caf\u{e9}");
            assert_eq!(
                get("raw_path").extract::<Vec<u8>>().unwrap(),
                b"/mount/caf%C3%A9"
            );
            assert_eq!(get("root_path").extract::<String>().unwrap(), "/mount");
            assert_eq!(get("scheme").extract::<String>().unwrap(), "https");
            let headers: Vec<(Vec<u8>, Vec<u8>)> = get("headers").extract().unwrap();
            assert_eq!(
                headers,
                vec![
                    (b"host".to_vec(), b"x".to_vec()),
                    (b"x-a".to_vec(), b"1".to_vec()),
                    (b"x-a".to_vec(), b"2".to_vec())
                ]
            );
            assert_eq!(
                get("client").extract::<(String, u16)>().unwrap(),
                ("127.0.0.1".into(), 5000)
            );
            let asgi = get("asgi");
            assert_eq!(
                asgi.get_item("version")
                    .unwrap()
                    .extract::<String>()
                    .unwrap(),
                "3.0"
            );
            let copied = get("state");
            assert!(
                !copied.is(&state),
                "each request gets its own copy of the state"
            );
            assert_eq!(copied.get_item("db").unwrap().extract::<i32>().unwrap(), 1);
        });
        assert_eq!(raw_path_of(b"/a?b=c"), b"/a");
        assert_eq!(raw_path_of(b"/a"), b"/a");
        assert_eq!(raw_path_of(b"/a#f"), b"/a");
        assert_eq!(raw_path_of(b"/a?b#f"), b"/a");
    }

    #[test]
    fn unset_fields_are_empty_and_addresses_none() {
        let mut b = HttpScope::builder();
        b.http_version("2")
            .set(ScopeField::Method, b"GET")
            .set(ScopeField::Target, b"/")
            .set(ScopeField::RequestId, b"abc");
        let scope = b.build();
        assert_eq!(scope.client(), None);
        assert_eq!(scope.server(), None);
        assert_eq!(scope.field(ScopeField::QueryString), b"");
        assert_eq!(scope.request_line(), "GET / HTTP/2.0");
        assert_eq!(scope.log_suffix(), ", request_id: abc");
        assert_eq!(scope.headers().count(), 0);
        with_python(|py| {
            let d = scope.to_dict(py, None).unwrap();
            assert!(d.get_item("client").unwrap().unwrap().is_none());
            assert!(d.get_item("state").unwrap().is_none());
        });
    }

    #[test]
    fn on_a_unix_socket_client_is_none_and_server_the_path_and_none() {
        let mut b = HttpScope::builder();
        b.http_version("1.1")
            .set(ScopeField::Method, b"GET")
            .client(b"unix:", None)
            .server(b"/run/app.sock", None);
        let scope = b.build();
        assert_eq!(
            scope.client_text(),
            "unix:",
            "log lines name it as nginx does"
        );
        with_python(|py| {
            let d = scope.to_dict(py, None).unwrap();
            assert!(d.get_item("client").unwrap().unwrap().is_none());
            let server: (String, Option<u16>) =
                d.get_item("server").unwrap().unwrap().extract().unwrap();
            assert_eq!(server, ("/run/app.sock".into(), None));
        });
    }

    #[test]
    fn a_path_that_is_not_utf8_is_decoded_as_python_replaces_and_any_method_passes() {
        let mut b = HttpScope::builder();
        b.http_version("1.1")
            .set(ScopeField::Method, b"PROPFIND")
            .set(ScopeField::Path, b"/caf\xe9/\xf0\x9f\x98\x80")
            .set(ScopeField::RootPath, b"/caf\xe9");
        let scope = b.build();
        with_python(|py| {
            let d = scope.to_dict(py, None).unwrap();
            let get = |k: &str| d.get_item(k).unwrap().unwrap().extract::<String>().unwrap();
            assert_eq!(get("path"), "/caf\u{fffd}/\u{1f600}");
            assert_eq!(get("root_path"), "/caf\u{fffd}");
            assert_eq!(get("method"), "PROPFIND");
            assert_eq!(get("http_version"), "1.1");
        });
    }
}
