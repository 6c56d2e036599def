//! A Python `bytes` object filled straight from a request body: one copy, from the server's
//! buffers or temp file into the object, with no zeroing pass before it.

use std::mem::MaybeUninit;

use pyo3::exceptions::{PyOSError, PyOverflowError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::body::Body;

/// `len` bytes of `body` from `pos`; an error if the body ends first or cannot be read.
pub fn read_bytes<'py>(
    py: Python<'py>,
    body: &Body,
    pos: u64,
    len: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    if len == 0 {
        // CPython's one shared empty object: not ours to write into.
        return Ok(PyBytes::new(py, b""));
    }
    let size = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyOverflowError::new_err("request body read too large"))?;
    // SAFETY: a NULL source asks CPython for a new object with `len` uninitialised bytes; NULL
    // comes back only with an exception set (memory), which `from_owned_ptr_or_err` reports.
    let object = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), size))?
            .cast_into_unchecked::<PyBytes>()
    };
    // SAFETY: the object is new and no other code holds it yet, so its `len` bytes are ours to
    // write; it is a `bytes` object, whose buffer `PyBytes_AsString` gives without failing.
    let buf = unsafe {
        std::slice::from_raw_parts_mut(
            ffi::PyBytes_AsString(object.as_ptr()).cast::<MaybeUninit<u8>>(),
            len,
        )
    };
    let got = body
        .read_at_uninit(pos, buf)
        .map_err(|e| PyOSError::new_err(format!("reading the request body: {e}")))?;
    if got != len {
        // Dropped unread: a `bytes` object's deallocation never looks at its contents.
        return Err(PyOSError::new_err("request body ended early"));
    }
    Ok(object)
}
