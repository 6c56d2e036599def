//! Python's `sys.stdout` and `sys.stderr` in a process that ends without `Py_FinalizeEx` (a
//! worker whose app threads outlived the shutdown timeout, a child the app forked): what they
//! still buffer is written out as Python's own exit would.

use pyo3::prelude::*;

/// Flushes `sys.stdout` and `sys.stderr`; both are tried, and the first failure is returned.
pub(crate) fn flush(py: Python<'_>) -> PyResult<()> {
    let sys = py.import("sys")?;
    let mut first_error = Ok(());
    for stream in ["stdout", "stderr"] {
        if let Ok(s) = sys.getattr(stream) {
            if !s.is_none() {
                if let Err(e) = s.call_method0("flush") {
                    first_error = first_error.and(Err(e));
                }
            }
        }
    }
    first_error
}
