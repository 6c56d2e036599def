//! Python's `sys.stdout` and `sys.stderr` in the server's processes: where they go (not to
//! `/dev/null`), and, in a process that ends without `Py_FinalizeEx` (a worker whose app
//! threads outlived the shutdown timeout, a child the app forked), what they still buffer is
//! written out as Python's own exit would.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{ErrorStream, StreamName};

/// A daemon (nginx's, Apache's) points descriptor 1 at `/dev/null`, and 2 at its error log file
/// (`/dev/null` when no error log is a file): there `sys.stdout` or `sys.stderr` writes to the
/// server's error log instead, an entry per line, as mod_wsgi does: every `print()` of the app
/// would be lost, and what it wrote to standard error would be bare lines in the log, without
/// time, level or request, and in the main log rather than its location's or virtual host's.
/// Elsewhere (a pipe to the journal, a terminal: a server in the foreground) they stay,
/// line-buffered, so that what an app prints shows at once and is not lost with a worker that
/// dies.
pub(crate) fn route(py: Python<'_>) -> PyResult<()> {
    let sys = py.import("sys")?;
    for (attr, name, fd) in [
        ("stdout", StreamName::Stdout, 1),
        ("stderr", StreamName::Stderr, 2),
    ] {
        let current = sys.getattr(attr)?;
        if current.is_none() || goes_nowhere(fd) || (fd == 2 && is_a_file(fd)) {
            sys.setattr(attr, Py::new(py, ErrorStream::new(name))?)?;
        } else {
            let line_buffered = PyDict::new(py);
            line_buffered.set_item("line_buffering", true)?;
            // Not every stream can (one an embedding replaced): it then stays as it is.
            let _ = current.call_method("reconfigure", (), Some(&line_buffered));
        }
    }
    Ok(())
}

/// Whether `fd` is a regular file: a server's standard error is its error log then.
fn is_a_file(fd: i32) -> bool {
    status(fd).is_some_and(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFREG)
}

/// Whether `fd` is closed or `/dev/null`.
fn goes_nowhere(fd: i32) -> bool {
    let Some(st) = status(fd) else {
        return true;
    };
    // SAFETY: a plain C struct, for which all zeros is a value.
    let mut null: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: stat only fills the buffer it is given.
    (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
        && unsafe { libc::stat(c"/dev/null".as_ptr(), &mut null) } == 0
        && st.st_rdev == null.st_rdev
}

/// `fd`'s status, or None when it is closed.
fn status(fd: i32) -> Option<libc::stat> {
    // SAFETY: a plain C struct, for which all zeros is a value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only fills the buffer it is given.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

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
