//! `start_response`'s checks of the app's status and headers: whatever is accepted writes one
//! clean line on the wire (no CR, LF or NUL can get through to split a header or start a new
//! one), and `head_from_python` agrees with the per-item checks it is made of.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ngx_wsgi::accel::AccelHeaders;
use ngx_wsgi::response::{head_from_python, parse_header, parse_status};
use ngx_wsgi::ResponseHead;
use ngx_wsgi_fuzz::with_python;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

#[derive(Arbitrary, Debug)]
struct Call {
    status: String,
    headers: Vec<(String, String)>,
    ignored: u8,
}

/// The text as latin-1 bytes, when every character fits.
fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// One HTTP/1.1 line is safe when nothing in it can end it or hide in it.
fn one_clean_line(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0)
}

fn token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn check_status(status: &str) -> bool {
    let accepted = parse_status(status);
    if let Ok((code, bytes)) = &accepted {
        assert_eq!(Some(bytes.to_vec()), latin1(status));
        assert!((200..=999).contains(code));
        assert_eq!(format!("{code:03}").as_bytes(), &bytes[..3]);
        assert_eq!(bytes[3], b' ');
        assert!(bytes.len() > 4 && bytes[4] != b' ' && bytes.last() != Some(&b' '));
        assert!(one_clean_line(bytes));
    }
    accepted.is_ok()
}

fn check_header(name: &str, value: &str) -> bool {
    let accepted = parse_header(name, value);
    if let Ok((n, v)) = &accepted {
        assert!(token(name));
        assert_eq!(*n, name.as_bytes());
        assert_eq!(Some(v.to_vec()), latin1(value));
        assert!(one_clean_line(v) && one_clean_line(n) && !n.contains(&b':'));
    }
    if latin1(value).is_some_and(|v| v.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0)) {
        assert!(accepted.is_err(), "{name:?}: {value:?} accepted");
    }
    accepted.is_ok()
}

/// Status, Content-Length and the other headers (as bytes) of a head.
type Expected = (u16, Option<u64>, Vec<(Vec<u8>, Vec<u8>)>);

/// The head the per-item checks describe, or `None` when one of them refuses.
fn model(call: &Call, ignored: AccelHeaders) -> Option<Expected> {
    let (code, _) = parse_status(&call.status).ok()?;
    let mut length = None;
    let mut headers = Vec::new();
    for (name, value) in &call.headers {
        let (n, v) = parse_header(name, value).ok()?;
        // The connection's headers, which the server drops (spelled out: the model does not
        // trust the list it checks).
        const DROPPED: [&[u8]; 7] = [
            b"connection",
            b"keep-alive",
            b"transfer-encoding",
            b"te",
            b"trailers",
            b"upgrade",
            b"proxy-connection",
        ];
        if ignored.covers(n) || DROPPED.iter().any(|d| n.eq_ignore_ascii_case(d)) {
            continue;
        }
        if n.eq_ignore_ascii_case(b"content-length") {
            let l = ngx_wsgi::content_length::parse(&v)?;
            if length.is_some_and(|old| old != l) {
                return None;
            }
            length = Some(l);
            continue;
        }
        headers.push((n.to_vec(), without_spaces_around(&v).to_vec()));
    }
    Some((code, length, headers))
}

/// A value as the head keeps it: without the spaces and tabs around it (RFC 9110 5.5).
fn without_spaces_around(value: &[u8]) -> &[u8] {
    let space = |c: &u8| *c == b' ' || *c == b'\t';
    let start = value.iter().position(|c| !space(c)).unwrap_or(value.len());
    let end = value.iter().rposition(|c| !space(c)).map_or(start, |e| e + 1);
    &value[start..end]
}

fuzz_target!(|call: Call| {
    check_status(&call.status);
    for (name, value) in &call.headers {
        check_header(name, value);
    }
    let ignored = AccelHeaders::from_bits(call.ignored);
    let expected = model(&call, ignored);
    with_python(|py| {
        let headers = PyList::empty(py);
        for (name, value) in &call.headers {
            headers
                .append(PyTuple::new(py, [name.as_str(), value.as_str()]).unwrap())
                .unwrap();
        }
        let status = pyo3::types::PyString::new(py, &call.status);
        let head = head_from_python(status.as_any(), headers.as_any(), ignored);
        match (&head, &expected) {
            (Ok(head), Some((code, length, headers))) => {
                assert_eq!(head.status, *code);
                assert_eq!(head.content_length, *length);
                let got: Vec<_> = head
                    .headers()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                assert_eq!(&got, headers);
                check_redirect_head(head);
            }
            (Err(_), None) => {}
            _ => panic!("head_from_python {head:?}, the checks say {expected:?}"),
        }
    });
});

/// The head an internal redirect keeps is the app's without the body's description.
fn check_redirect_head(head: &ResponseHead) {
    const DROPPED: [&str; 6] = [
        "x-accel-redirect",
        "content-type",
        "content-length",
        "last-modified",
        "etag",
        "accept-ranges",
    ];
    let kept = head.for_internal_redirect();
    let expected: Vec<_> = head
        .headers()
        .filter(|(n, _)| !DROPPED.iter().any(|d| n.eq_ignore_ascii_case(d.as_bytes())))
        .collect();
    assert_eq!(kept.headers().collect::<Vec<_>>(), expected);
    assert_eq!(kept.status_line(), head.status_line());
}
