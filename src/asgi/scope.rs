//! The HTTP connection scope: what a server copies out of its parsed request (on its own
//! thread), and the dict the app gets (built on the event loop's thread).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

/// The `asgi` entry of every scope: ASGI 3.0, and the HTTP spec version this server follows
/// (2.4: `send()` raises an `OSError` once the client is gone, `http.disconnect` otherwise).
pub const ASGI_VERSION: &str = "3.0";
pub const HTTP_SPEC_VERSION: &str = "2.4";

/// One request's scope, in memory the request owns.
#[derive(Debug, Default, Clone)]
pub struct HttpScope {
    /// `1.0`, `1.1`, `2` or `3`.
    pub http_version: &'static str,
    pub method: Vec<u8>,
    pub https: bool,
    /// The decoded path, location prefix included (the server's normalised URI).
    pub path: Vec<u8>,
    /// The path as the client sent it (without the query string).
    pub raw_path: Vec<u8>,
    pub query_string: Vec<u8>,
    /// The location prefix, without its trailing slash (empty at the root).
    pub root_path: Vec<u8>,
    pub headers: RequestHeaders,
    pub client: Option<(Vec<u8>, u16)>,
    pub server: Option<(Vec<u8>, u16)>,
    /// The server's id of the request, for log lines (not part of the scope).
    pub request_id: Vec<u8>,
    /// `METHOD URI PROTOCOL` as received, for log lines.
    pub request_line: String,
    /// A WebSocket handshake: the scope is a `websocket` one.
    pub websocket: bool,
    /// `Sec-WebSocket-Protocol`'s values, in order.
    pub subprotocols: Vec<String>,
}

/// A request's headers in one buffer (two allocations, whatever their number: the scope is made
/// on the server's thread and freed on the loop's): names lowercased, in arrival order, repeats
/// kept.
#[derive(Debug, Default, Clone)]
pub struct RequestHeaders {
    bytes: Vec<u8>,
    /// Where each header's name starts in `bytes`, its length and its value's (which follows it).
    spans: Vec<(u32, u32, u32)>,
}

impl RequestHeaders {
    pub fn with_capacity(headers: usize, bytes: usize) -> RequestHeaders {
        RequestHeaders {
            bytes: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(headers),
        }
    }

    /// Adds a header, its name lowercased as ASGI gives it. (A request's headers fit nginx's
    /// header buffers, far below 4 GiB.)
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        self.bytes[start..].make_ascii_lowercase();
        self.bytes.extend_from_slice(value);
        self.spans
            .push((start as u32, name.len() as u32, value.len() as u32));
    }

    /// Each header's name and value, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&(start, name, value)| {
            let (start, name, value) = (start as usize, name as usize, value as usize);
            (
                &self.bytes[start..start + name],
                &self.bytes[start + name..start + name + value],
            )
        })
    }
}

impl HttpScope {
    /// `, request_id: ID` for log lines (empty without an id).
    pub fn log_suffix(&self) -> String {
        if self.request_id.is_empty() {
            String::new()
        } else {
            format!(
                ", request_id: {}",
                String::from_utf8_lossy(&self.request_id)
            )
        }
    }

    /// `client: ADDR` for log lines.
    pub fn client_text(&self) -> String {
        self.client.as_ref().map_or_else(String::new, |(a, _)| {
            String::from_utf8_lossy(a).into_owned()
        })
    }

    /// The scope dict; `state` is the app's lifespan state, shallow-copied into the scope.
    pub fn to_dict<'py>(
        &self,
        py: Python<'py>,
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let scope = PyDict::new(py);
        let kind = if self.websocket { "websocket" } else { "http" };
        scope.set_item(pyo3::intern!(py, "type"), kind)?;
        let asgi = PyDict::new(py);
        asgi.set_item(pyo3::intern!(py, "version"), ASGI_VERSION)?;
        asgi.set_item(pyo3::intern!(py, "spec_version"), HTTP_SPEC_VERSION)?;
        scope.set_item(pyo3::intern!(py, "asgi"), asgi)?;
        scope.set_item(pyo3::intern!(py, "http_version"), self.http_version)?;
        if !self.websocket {
            scope.set_item(
                pyo3::intern!(py, "method"),
                crate::environ::latin1(py, &self.method)?,
            )?;
        } else {
            scope.set_item(
                pyo3::intern!(py, "subprotocols"),
                pyo3::types::PyList::new(py, &self.subprotocols)?,
            )?;
        }
        let scheme = match (self.websocket, self.https) {
            (false, false) => "http",
            (false, true) => "https",
            (true, false) => "ws",
            (true, true) => "wss",
        };
        scope.set_item(pyo3::intern!(py, "scheme"), scheme)?;
        scope.set_item(
            pyo3::intern!(py, "path"),
            PyString::new(py, &String::from_utf8_lossy(&self.path)),
        )?;
        scope.set_item(
            pyo3::intern!(py, "raw_path"),
            PyBytes::new(py, &self.raw_path),
        )?;
        scope.set_item(
            pyo3::intern!(py, "query_string"),
            PyBytes::new(py, &self.query_string),
        )?;
        scope.set_item(
            pyo3::intern!(py, "root_path"),
            PyString::new(py, &String::from_utf8_lossy(&self.root_path)),
        )?;
        let headers = PyList::empty(py);
        for (name, value) in self.headers.iter() {
            headers.append(PyTuple::new(
                py,
                [PyBytes::new(py, name), PyBytes::new(py, value)],
            )?)?;
        }
        scope.set_item(pyo3::intern!(py, "headers"), headers)?;
        for (key, addr) in [("client", &self.client), ("server", &self.server)] {
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
        let extension = if self.websocket {
            "websocket.http.response"
        } else {
            "http.response.pathsend"
        };
        extensions.set_item(extension, PyDict::new(py))?;
        scope.set_item(pyo3::intern!(py, "extensions"), extensions)?;
        if let Some(state) = state {
            scope.set_item(pyo3::intern!(py, "state"), state.copy()?)?;
        }
        Ok(scope)
    }
}

impl HttpScope {
    /// The first value of request header `name` (lowercase).
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// Whether the request asks for a WebSocket (RFC 6455 handshake, version 13, HTTP/1.1 GET).
    pub fn is_websocket_handshake(&self) -> bool {
        let has_token = |name: &[u8], token: &str| {
            self.headers.iter().any(|(n, v)| {
                n == name
                    && String::from_utf8_lossy(v)
                        .split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        };
        self.method == b"GET"
            && self.http_version == "1.1"
            && has_token(b"upgrade", "websocket")
            && has_token(b"connection", "upgrade")
            && self.header(b"sec-websocket-key").is_some()
            && self.header(b"sec-websocket-version") == Some(b"13")
    }

    /// Makes this a `websocket` scope (its subprotocols from the request).
    pub fn into_websocket(mut self) -> HttpScope {
        self.websocket = true;
        self.subprotocols = self
            .headers
            .iter()
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

/// The path of a request target (up to its `?`).
pub fn raw_path_of(target: &[u8]) -> &[u8] {
    match target.iter().position(|&c| c == b'?') {
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
        let scope = HttpScope {
            http_version: "1.1",
            method: b"POST".to_vec(),
            https: true,
            path: "/mount/caf\u{e9}".as_bytes().to_vec(),
            raw_path: b"/mount/caf%C3%A9".to_vec(),
            query_string: b"a=1".to_vec(),
            root_path: b"/mount".to_vec(),
            headers: {
                let mut h = RequestHeaders::default();
                h.push(b"Host", b"x");
                h.push(b"X-A", b"1");
                h.push(b"x-a", b"2");
                h
            },
            client: Some((b"127.0.0.1".to_vec(), 5000)),
            server: Some((b"127.0.0.1".to_vec(), 80)),
            ..Default::default()
        };
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
    }
}
