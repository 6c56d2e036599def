//! `wsgi.errors`: a text stream whose lines go to the server's error log (through `tracing`,
//! target `wsgi.errors`), one log entry per line.
//!
//! One stream object serves every request; an unfinished line is kept per thread (a request runs
//! on one thread), so concurrent requests never mix their text, and it is flushed when the
//! request ends.

use std::cell::RefCell;

use pyo3::prelude::*;
use pyo3::types::PyString;

#[pyclass(module = "ngx_wsgi", name = "ErrorStream", frozen)]
#[derive(Default)]
pub struct ErrorStream;

thread_local! {
    /// Text this thread wrote since its last newline.
    static PENDING: RefCell<String> = const { RefCell::new(String::new()) };
}

fn emit_lines(text: &str) {
    PENDING.with_borrow_mut(|pending| {
        pending.push_str(text);
        if let Some(end) = pending.rfind('\n') {
            let suffix = crate::logging_bridge::request_suffix();
            for line in pending[..end].split('\n') {
                tracing::error!(target: "wsgi.errors", "{line}{suffix}");
            }
            pending.drain(..=end);
        }
    });
}

/// Logs what the calling thread wrote without a final newline (at the end of a request).
pub fn flush_thread() {
    PENDING.with_borrow_mut(|pending| {
        if !pending.is_empty() {
            let suffix = crate::logging_bridge::request_suffix();
            tracing::error!(target: "wsgi.errors", "{}{suffix}", pending.as_str());
            pending.clear();
        }
    });
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
        emit_lines(&s);
        Ok(s.chars().count())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        flush_thread();
    }

    fn writable(&self) -> bool {
        true
    }
}
