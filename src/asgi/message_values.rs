//! The byte strings in an app's messages (bodies, WebSocket payloads, header names and values),
//! read as uvicorn and Hypercorn read them: `bytes`, or a `bytearray` or `memoryview` (a buffer
//! an app accumulated or sliced), copied once into `bytes`. Nothing else passes: not `str`,
//! not a list of ints.

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

/// `value` as `bytes`, or None when it is not a byte string.
pub fn byte_string<'py>(value: &Bound<'py, PyAny>) -> Option<Bound<'py, PyBytes>> {
    if let Ok(b) = value.cast::<PyBytes>() {
        return Some(b.clone());
    }
    if let Ok(b) = value.cast::<PyByteArray>() {
        return Some(PyBytes::new(value.py(), &b.to_vec()));
    }
    if value.cast::<PyMemoryView>().is_ok() {
        return value
            .call_method0(pyo3::intern!(value.py(), "tobytes"))
            .ok()?
            .cast_into::<PyBytes>()
            .ok();
    }
    None
}

/// One `[name, value]` header of a message (a list or a tuple of two byte strings).
pub fn header_pair(item: &Bound<'_, PyAny>) -> PyResult<(Vec<u8>, Vec<u8>)> {
    let bad = || {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "each header must be a [name, value] pair of bytes, not {item:?}"
        ))
    };
    if item.len().map_err(|_| bad())? != 2 {
        return Err(bad());
    }
    let part = |i: usize| -> PyResult<Vec<u8>> {
        let v = item.get_item(i).map_err(|_| bad())?;
        let b = byte_string(&v).ok_or_else(bad)?;
        Ok(b.as_bytes().to_vec())
    };
    Ok((part(0)?, part(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    #[test]
    fn bytes_and_buffers_pass_and_nothing_else() {
        with_python(|py| {
            for (expr, expected) in [
                ("b'ab'", Some(&b"ab"[..])),
                ("bytearray(b'ab')", Some(b"ab")),
                ("memoryview(b'xaby')[1:3]", Some(b"ab")),
                ("'ab'", None),
                ("[97, 98]", None),
                ("2", None),
                ("None", None),
            ] {
                let v = py
                    .eval(&std::ffi::CString::new(expr).unwrap(), None, None)
                    .unwrap();
                let got = byte_string(&v);
                assert_eq!(got.as_ref().map(|b| b.as_bytes()), expected, "{expr}");
            }
            for (expr, ok) in [
                ("(b'a', b'1')", true),
                ("[b'a', bytearray(b'1')]", true),
                ("[b'a']", false),
                ("('a', '1')", false),
                ("b'ab'", false),
            ] {
                let v = py
                    .eval(&std::ffi::CString::new(expr).unwrap(), None, None)
                    .unwrap();
                assert_eq!(header_pair(&v).is_ok(), ok, "{expr}");
            }
        });
    }
}
