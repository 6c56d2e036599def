//! The environ built from raw request parts (method, path and mount, query, any header names and
//! values, extra parameters, a de-chunked body length) against a model of SPEC.md's rules: every
//! value is the bytes as latin-1, a header name with `_` never maps, repeats are joined, the
//! server's fields never come from headers.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ngx_wsgi::environ::{split_mount, Field};
use ngx_wsgi::RequestInfoBuilder;
use ngx_wsgi_fuzz::{latin1, with_python};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

#[derive(Arbitrary, Debug)]
struct Request {
    method: Vec<u8>,
    path: Vec<u8>,
    mount: Vec<u8>,
    query: Vec<u8>,
    uri: Vec<u8>,
    server: [Vec<u8>; 5],
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    params: Vec<(Vec<u8>, Vec<u8>)>,
    body_length: Option<u64>,
    /// Apache adds the de-chunked length before the parameters, nginx after.
    length_first: bool,
    https: bool,
    request_id: Vec<u8>,
}

const SERVER_FIELDS: [(Field, &str); 5] = [
    (Field::ServerName, "SERVER_NAME"),
    (Field::ServerPort, "SERVER_PORT"),
    (Field::ServerProtocol, "SERVER_PROTOCOL"),
    (Field::RemoteAddr, "REMOTE_ADDR"),
    (Field::RemotePort, "REMOTE_PORT"),
];

fn build(req: &Request) -> ngx_wsgi::RequestInfo {
    let (script_name, path_info) = split_mount(&req.path, &req.mount);
    let mut b = RequestInfoBuilder::with_capacity(64);
    b.set(Field::RequestMethod, &req.method)
        .set(Field::ScriptName, script_name)
        .set(Field::PathInfo, path_info)
        .set(Field::QueryString, &req.query)
        .set(Field::RequestUri, &req.uri)
        .request_id(&req.request_id)
        .https(req.https);
    for ((field, _), value) in SERVER_FIELDS.iter().zip(&req.server) {
        b.set(*field, value);
    }
    for (name, value) in &req.headers {
        b.header(name, value);
    }
    if req.length_first {
        if let Some(len) = req.body_length {
            b.body_length(len);
        }
    }
    for (name, value) in &req.params {
        b.param(name, value);
    }
    if !req.length_first {
        if let Some(len) = req.body_length {
            b.body_length(len);
        }
    }
    b.finish()
}

/// The environ's string entries as SPEC.md describes them.
fn model(req: &Request) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let (script_name, path_info) = split_mount(&req.path, &req.mount);
    let mut set = |k: &str, v: &[u8]| env.insert(k.to_string(), latin1(v));
    set("REQUEST_METHOD", &req.method);
    set("SCRIPT_NAME", script_name);
    set("PATH_INFO", path_info);
    set("QUERY_STRING", &req.query);
    set("REQUEST_URI", &req.uri);
    for ((_, key), value) in SERVER_FIELDS.iter().zip(&req.server) {
        set(key, value);
    }
    for (name, value) in &req.headers {
        if name.is_empty() || name.contains(&b'_') {
            continue;
        }
        let (key, sep) = if name.eq_ignore_ascii_case(b"content-type") {
            ("CONTENT_TYPE".to_string(), ", ")
        } else if name.eq_ignore_ascii_case(b"content-length") {
            env.insert("CONTENT_LENGTH".into(), latin1(value));
            continue;
        } else {
            let upper: Vec<u8> = name
                .iter()
                .map(|&c| {
                    if c == b'-' {
                        b'_'
                    } else {
                        c.to_ascii_uppercase()
                    }
                })
                .collect();
            let sep = if name.eq_ignore_ascii_case(b"cookie") {
                "; "
            } else {
                ", "
            };
            (format!("HTTP_{}", latin1(&upper)), sep)
        };
        let value = latin1(value);
        env.entry(key)
            .and_modify(|old| {
                old.push_str(sep);
                old.push_str(&value);
            })
            .or_insert(value);
    }
    let length = |env: &mut BTreeMap<String, String>| {
        if let Some(len) = req.body_length {
            env.insert("CONTENT_LENGTH".into(), len.to_string());
            env.remove("HTTP_TRANSFER_ENCODING");
        }
    };
    if req.length_first {
        length(&mut env);
    }
    // CGI's mark of a TLS request, before the params, which may replace it.
    if req.https {
        env.insert("HTTPS".into(), "on".into());
    }
    for (name, value) in &req.params {
        env.insert(latin1(name), latin1(value));
    }
    if !req.length_first {
        length(&mut env);
    }
    // Set last, from the connection and the request's body.
    env.insert(
        "wsgi.url_scheme".into(),
        (if req.https { "https" } else { "http" }).into(),
    );
    env.remove("wsgi.input");
    env
}

fuzz_target!(|req: Request| {
    let (script_name, path_info) = split_mount(&req.path, &req.mount);
    assert_eq!([script_name, path_info].concat(), req.path);
    assert!(script_name.is_empty() || script_name == req.mount.as_slice());
    assert!(path_info.is_empty() || script_name.is_empty() || path_info[0] == b'/');

    let info = build(&req);
    assert_eq!(info.request_id(), req.request_id.as_slice());
    let expected = model(&req);
    with_python(|py| {
        let environ = info
            .to_environ(py, py.None().into_bound(py))
            .expect("the environ builds");
        let got = strings(&environ);
        assert_eq!(got, expected);
        // The shared entries are there, whatever the request held (params may replace them).
        for key in [
            "wsgi.version",
            "wsgi.input",
            "wsgi.errors",
            "wsgi.file_wrapper",
        ] {
            assert!(environ.contains(key).unwrap());
        }
    });
});

/// The environ's entries whose key and value are both `str`, except those the model leaves out
/// (the constant `wsgi.*` ones).
fn strings(environ: &Bound<'_, PyDict>) -> BTreeMap<String, String> {
    environ
        .iter()
        .filter_map(|(k, v)| {
            let k = k.cast::<PyString>().ok()?.to_cow().ok()?.into_owned();
            let v = v.cast::<PyString>().ok()?.to_cow().ok()?.into_owned();
            Some((k, v))
        })
        .collect()
}
