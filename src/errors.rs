//! `wsgi.errors`: a text stream whose lines go to the server's error log (through `tracing`,
//! target `wsgi.errors`), one log entry per line. The same kind of stream stands in for
//! `sys.stdout` and `sys.stderr` where they would be lost (see [`crate::std_streams`]).
//!
//! An unfinished line is kept per thread and per stream (a WSGI request runs on one thread), so
//! concurrent requests never mix their text, and it is flushed when the request ends. ASGI
//! requests share the event loop's thread: a line one task began is ended as it is, under its
//! own request, when another task writes.

use std::cell::RefCell;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

/// Which stream a text goes out as: its log entries begin with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamName {
    #[default]
    WsgiErrors,
    Stdout,
    Stderr,
}

impl StreamName {
    const ALL: [StreamName; 3] = [
        StreamName::WsgiErrors,
        StreamName::Stdout,
        StreamName::Stderr,
    ];

    /// The descriptor the stream stands in for (`wsgi.errors` has none).
    fn fd(self) -> Option<i32> {
        match self {
            StreamName::WsgiErrors => None,
            StreamName::Stdout => Some(1),
            StreamName::Stderr => Some(2),
        }
    }
}

#[pyclass(module = "ngx_wsgi", name = "ErrorStream", frozen)]
#[derive(Default)]
pub struct ErrorStream {
    name: StreamName,
    /// The `buffer` of a stand-in `sys.stdout` or `sys.stderr`: it takes bytes (click's `echo`
    /// of bytes), decoded as UTF-8.
    binary: bool,
}

impl ErrorStream {
    pub(crate) fn new(name: StreamName) -> Self {
        ErrorStream {
            name,
            binary: false,
        }
    }
}

/// Text a thread wrote to one stream since its last newline, and the request suffix of its log
/// entries (the request it was written for).
struct Pending {
    text: String,
    suffix: String,
    /// Where its entries go (see [`crate::server_log::routed`]).
    route: usize,
}

const NOTHING_PENDING: Pending = Pending {
    text: String::new(),
    suffix: String::new(),
    route: 0,
};

thread_local! {
    static PENDING: RefCell<[Pending; 3]> = const { RefCell::new([NOTHING_PENDING; 3]) };
}

fn log_line(name: StreamName, line: &str, pending: &Pending) {
    let suffix = &pending.suffix;
    // Python's own stderr and print() are logged as wsgi.errors is, at error: mod_wsgi's level,
    // and nginx's default error_log level, where anything lower is dropped.
    crate::server_log::routed(pending.route, || match name {
        StreamName::WsgiErrors => tracing::error!(target: "wsgi.errors", "{line}{suffix}"),
        StreamName::Stdout => tracing::error!(target: "sys.stdout", "{line}{suffix}"),
        StreamName::Stderr => tracing::error!(target: "sys.stderr", "{line}{suffix}"),
    })
}

fn emit_lines(py: Python<'_>, name: StreamName, text: &str) {
    let (suffix, route) = crate::logging_bridge::python_origin(py);
    PENDING.with_borrow_mut(|all| {
        let pending = &mut all[name as usize];
        if !pending.text.is_empty() && (pending.suffix != suffix || pending.route != route) {
            log_line(name, &pending.text, pending);
            pending.text.clear();
        }
        if pending.text.is_empty() {
            (pending.suffix, pending.route) = (suffix, route);
        }
        pending.text.push_str(text);
        if let Some(end) = pending.text.rfind('\n') {
            for line in pending.text[..end].split('\n') {
                log_line(name, line, pending);
            }
            pending.text.drain(..=end);
        }
    });
}

fn flush_one(name: StreamName) {
    PENDING.with_borrow_mut(|all| {
        let pending = &mut all[name as usize];
        if !pending.text.is_empty() {
            log_line(name, &pending.text, pending);
            pending.text.clear();
        }
    });
}

/// Logs what the calling thread wrote without a final newline (at the end of a request).
pub fn flush_thread() {
    for name in StreamName::ALL {
        flush_one(name);
    }
}

/// io's `UnsupportedOperation`, as io's own streams raise it.
fn unsupported(py: Python<'_>, what: &str) -> PyErr {
    match py
        .import("io")
        .and_then(|io| io.getattr("UnsupportedOperation"))
        .and_then(|class| class.call1((what,)))
    {
        Ok(err) => PyErr::from_value(err),
        Err(e) => e,
    }
}

#[pymethods]
impl ErrorStream {
    fn write(&self, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let py = text.py();
        if self.binary {
            // bytes() takes any bytes-like object (bytearray, memoryview) in one copy.
            let data = py
                .get_type::<PyBytes>()
                .call1((text,))
                .ok()
                .filter(|_| !text.is_instance_of::<PyString>())
                .ok_or_else(|| {
                    pyo3::exceptions::PyTypeError::new_err(format!(
                        "a bytes-like object is required, not {}",
                        crate::response::type_name(text)
                    ))
                })?;
            let data = data.cast::<PyBytes>()?.as_bytes();
            emit_lines(py, self.name, &String::from_utf8_lossy(data));
            return Ok(data.len());
        }
        let text = text.cast::<PyString>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "wsgi.errors.write() argument must be str, not {}",
                crate::response::type_name(text)
            ))
        })?;
        emit_lines(py, self.name, &crate::log_text::python_text(text));
        text.len()
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        flush_one(self.name);
    }

    fn writable(&self) -> bool {
        true
    }

    fn readable(&self) -> bool {
        false
    }

    fn seekable(&self) -> bool {
        false
    }

    fn isatty(&self) -> bool {
        false
    }

    /// The descriptor it stands in for, so that `faulthandler.enable()` and the like still
    /// work; `wsgi.errors` has none.
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.name
            .fd()
            .ok_or_else(|| unsupported(py, "wsgi.errors has no file descriptor"))
    }

    #[getter]
    fn closed(&self) -> bool {
        false
    }

    #[getter]
    fn encoding(&self) -> &'static str {
        "utf-8"
    }

    #[getter]
    fn errors(&self) -> &'static str {
        "backslashreplace"
    }

    #[getter]
    fn line_buffering(&self) -> bool {
        true
    }

    /// Bytes written here go out as the text's do (decoded as UTF-8); `wsgi.errors` has none.
    #[getter]
    fn buffer(&self, py: Python<'_>) -> PyResult<Py<ErrorStream>> {
        if self.name == StreamName::WsgiErrors || self.binary {
            return Err(pyo3::exceptions::PyAttributeError::new_err("no buffer"));
        }
        Py::new(
            py,
            ErrorStream {
                name: self.name,
                binary: true,
            },
        )
    }

    /// The binary stream under a text one, as io's `detach()` gives it (the text stream goes on
    /// working: the server's log is not the app's to take away); `wsgi.errors` has none.
    fn detach(&self, py: Python<'_>) -> PyResult<Py<ErrorStream>> {
        self.buffer(py)
            .map_err(|_| unsupported(py, "this stream has no buffer to detach"))
    }

    /// Takes io's settings (`sys.stdout.reconfigure(encoding="utf-8")` at import is common):
    /// lines are logged as they come, UTF-8, whatever they say.
    #[pyo3(signature = (**settings))]
    fn reconfigure(&self, settings: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        for key in settings.into_iter().flat_map(|s| s.keys()) {
            let key = key.to_string();
            if ![
                "encoding",
                "errors",
                "newline",
                "line_buffering",
                "write_through",
            ]
            .contains(&key.as_str())
            {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "reconfigure() got an unexpected keyword argument '{key}'"
                )));
            }
        }
        Ok(())
    }

    /// The server's log stays open: what the app writes after closing it is logged too.
    fn close(&self) {
        flush_one(self.name);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    #[getter]
    fn mode(&self) -> &'static str {
        if self.binary {
            "wb"
        } else {
            "w"
        }
    }

    #[getter]
    fn newlines(&self) -> Option<&'static str> {
        None
    }

    #[getter]
    fn name(&self) -> &'static str {
        match self.name {
            StreamName::WsgiErrors => "wsgi.errors",
            StreamName::Stdout => "<stdout>",
            StreamName::Stderr => "<stderr>",
        }
    }
}
