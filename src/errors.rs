//! `wsgi.errors`: a text stream whose lines go to the server's error log (through `tracing`,
//! target `wsgi.errors`), one log entry per line.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyString;

#[pyclass(module = "ngx_wsgi", name = "ErrorStream", frozen)]
#[derive(Default)]
pub struct ErrorStream {
    /// Text written since the last newline; emitted by the next newline or `flush()`.
    pending: Mutex<String>,
}

impl ErrorStream {
    fn emit_lines(&self, text: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push_str(text);
        if let Some(end) = pending.rfind('\n') {
            for line in pending[..end].split('\n') {
                tracing::error!(target: "wsgi.errors", "{line}");
            }
            pending.drain(..=end);
        }
    }
}

#[pymethods]
impl ErrorStream {
    fn write(&self, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text.cast::<PyString>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "wsgi.errors.write() argument must be str, not {}",
                crate::response::type_name(text)
            ))
        })?;
        let s = text.to_cow()?;
        self.emit_lines(&s);
        Ok(s.chars().count())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            tracing::error!(target: "wsgi.errors", "{}", pending.as_str());
            pending.clear();
        }
    }

    fn writable(&self) -> bool {
        true
    }
}
