//! What the fuzz targets share: one embedded interpreter per fuzz process, and reference models
//! written independently of the code under test.

use std::sync::Once;

use pyo3::prelude::*;

/// Runs `f` with the GIL, starting the interpreter the first time. Python's allocations go
/// through `malloc` so that AddressSanitizer sees them.
pub fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    static START: Once = Once::new();
    START.call_once(|| {
        // SAFETY: called once, before the interpreter or any other thread of this process reads
        // the environment.
        unsafe { std::env::set_var("PYTHONMALLOC", "malloc") };
        ngx_wsgi::interpreter::initialize(&Default::default()).expect("python starts");
    });
    ngx_wsgi::interpreter::attach(f)
}

/// `bytes` as a native string's code points (latin-1).
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Percent-decoding as RFC 3986 defines it; `None` for a `%` not followed by two hex digits.
pub fn percent_decoded(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some((&c, tail)) = rest.split_first() {
        if c != b'%' {
            out.push(c);
            rest = tail;
            continue;
        }
        let hex = tail.get(..2)?;
        let text = std::str::from_utf8(hex).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        out.push(u8::from_str_radix(text, 16).ok()?);
        rest = &tail[2..];
    }
    Some(out)
}

/// Whether a path has a `..` segment, or a leading `..` (`..`, `../x`).
pub fn has_dot_dot_segment(path: &[u8]) -> bool {
    path.split(|&c| c == b'/').any(|s| s == b"..")
}
