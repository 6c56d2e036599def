//! Python exceptions as the text `traceback` would print.

use pyo3::prelude::*;
use pyo3::types::PyString;

/// The full traceback of `err`, as `traceback.format_exception` renders it (no trailing newline).
pub fn format(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let lines = py.import("traceback")?.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let text = PyString::new(py, "").call_method1("join", (lines,))?;
        text.extract::<String>()
    })();
    match formatted {
        Ok(text) => text.trim_end().to_owned(),
        Err(_) => err.to_string(),
    }
}
