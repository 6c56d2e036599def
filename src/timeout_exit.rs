//! The exceptions a request's deadline sets in the thread that runs it: its `TimeoutError`, and
//! what follows it when the app catches it and runs on (an `except Exception` retry loop, an
//! `except TimeoutError` that tries again): `TimeoutExit`, a `BaseException` as `SystemExit` and
//! `GeneratorExit` are, which such handlers let through, so that the thread (or the ASGI event
//! loop) comes back to the server.
//!
//! Both count, per thread, each time one is raised (lands): an asynchronous exception set in a
//! thread that waits in a C call stays pending until the call returns, and one that is pending
//! must not be replaced (a `TimeoutExit` in its place would skip the app's `except TimeoutError`
//! clean-up), while one that landed and left the request running was caught.

use std::time::Duration;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyModule, PyType};

use crate::embedded_module::EmbeddedModule;

/// How long a timed-out request may run the app's code after its `TimeoutError` landed (enough
/// for the clean-up an `except TimeoutError` does) before it gets `TimeoutExit`, and how often
/// it gets it again while it runs on.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

const EXCEPTIONS: &std::ffi::CStr = c"
import _thread
from time import monotonic

_landed = {}


def landed(ident):
    count, when = _landed.get(ident, (0, 0.0))
    return count, max(monotonic() - when, 0.0)


def _count():
    ident = _thread.get_ident()
    _landed[ident] = (_landed.get(ident, (0, 0.0))[0] + 1, monotonic())


class DeadlineTimeoutError(TimeoutError):
    '''The request's deadline passed (wsgi_read_timeout); the server has answered it.'''

    def __init__(self, *args):
        super().__init__(*args)
        _count()


class TimeoutExit(BaseException):
    '''The request's deadline passed and the app caught its TimeoutError and ran on; a
    BaseException, so that `except Exception` lets it through.'''

    def __init__(self, *args):
        super().__init__(*args)
        _count()


# A TimeoutError to the app and in its tracebacks (`except TimeoutError` takes it).
DeadlineTimeoutError.__name__ = DeadlineTimeoutError.__qualname__ = 'TimeoutError'
DeadlineTimeoutError.__module__ = TimeoutExit.__module__ = 'ngx_wsgi'
";

static MODULE: EmbeddedModule =
    EmbeddedModule::new(EXCEPTIONS, c"ngx_wsgi_deadline.py", c"ngx_wsgi_deadline");

fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    MODULE.get(py)
}

/// Which of the deadline's exceptions to set.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// The first: an ordinary `TimeoutError` (the `OSError` subclass), for the app to clean up.
    TimeoutError,
    /// After a caught one: `TimeoutExit`.
    Exit,
}

fn class(py: Python<'_>, which: Deadline) -> PyResult<Bound<'_, PyType>> {
    let name = match which {
        Deadline::TimeoutError => "DeadlineTimeoutError",
        Deadline::Exit => "TimeoutExit",
    };
    Ok(module(py)?.getattr(name)?.cast_into::<PyType>()?)
}

/// The deadline's `TimeoutError` subclass, as `ngx_wsgi.TimeoutError`.
pub(crate) fn timeout_error(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    class(py, Deadline::TimeoutError)
}

/// `ngx_wsgi.TimeoutExit`.
pub(crate) fn timeout_exit(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    class(py, Deadline::Exit)
}

/// The deadline's exceptions that have landed in one thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Landed {
    /// How many so far.
    pub(crate) count: u64,
    /// How long ago the last one did.
    pub(crate) ago: Duration,
}

/// The deadline's exceptions that have landed in the thread `ident` so far.
pub(crate) fn landed(py: Python<'_>, ident: u64) -> Landed {
    let (count, ago) = module(py)
        .and_then(|m| m.call_method1("landed", (ident,)))
        .and_then(|n| n.extract::<(u64, f64)>())
        .unwrap_or((0, 0.0));
    Landed {
        count,
        ago: Duration::try_from_secs_f64(ago).unwrap_or(Duration::ZERO),
    }
}

/// Sets `which` as the thread `ident`'s pending asynchronous exception. The caller holds the GIL
/// and has just checked, with no Python code run since, that the thread still runs the
/// timed-out request: nothing here runs Python code once the class is made (by [`landed`],
/// which the callers ask first).
pub(crate) fn raise_in(py: Python<'_>, ident: u64, which: Deadline) {
    let class = match class(py, which) {
        Ok(class) => class,
        Err(e) => {
            tracing::error!(target: "wsgi", "cannot make the deadline's exception: {e}");
            return;
        }
    };
    // SAFETY: the GIL is held; the thread is alive (checked by the caller under the GIL); the
    // class is kept alive by its module, which lives as long as the interpreter.
    unsafe { ffi::PyThreadState_SetAsyncExc(ident as _, class.as_ptr()) };
}

/// Whether `err` is the deadline's: a `TimeoutError`, or the `TimeoutExit` that follows it.
pub(crate) fn from_the_deadline(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<pyo3::exceptions::PyTimeoutError>(py)
        || class(py, Deadline::Exit).is_ok_and(|exit| err.is_instance(py, &exit))
}

/// The name of `err`'s class for a log line: `TimeoutExit` or `TimeoutError`.
pub(crate) fn name(py: Python<'_>, err: &PyErr) -> &'static str {
    if class(py, Deadline::Exit).is_ok_and(|exit| err.is_instance(py, &exit)) {
        "TimeoutExit"
    } else {
        "TimeoutError"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    #[test]
    fn timeout_error_is_one_and_timeout_exit_passes_except_exception() {
        with_python(|py| {
            let error = class(py, Deadline::TimeoutError).unwrap();
            let exit = class(py, Deadline::Exit).unwrap();
            assert!(error
                .is_subclass_of::<pyo3::exceptions::PyTimeoutError>()
                .unwrap());
            assert!(!exit
                .is_subclass_of::<pyo3::exceptions::PyException>()
                .unwrap());
            assert!(exit
                .is_subclass_of::<pyo3::exceptions::PyBaseException>()
                .unwrap());
            assert_eq!(error.name().unwrap().to_string(), "TimeoutError");
            let made = |c: &Bound<'_, PyType>| PyErr::from_value(c.call0().unwrap());
            assert!(from_the_deadline(py, &made(&error)));
            assert!(from_the_deadline(py, &made(&exit)));
            assert_eq!(name(py, &made(&exit)), "TimeoutExit");
            assert_eq!(name(py, &made(&error)), "TimeoutError");
            assert!(!from_the_deadline(
                py,
                &pyo3::exceptions::PyValueError::new_err("other")
            ));
        });
    }

    #[test]
    fn each_raised_one_counts_on_its_thread() {
        with_python(|py| {
            // SAFETY: plain query of the calling thread's identity.
            let ident = unsafe { ffi::PyThread_get_thread_ident() } as u64;
            let before = landed(py, ident).count;
            let _ = class(py, Deadline::TimeoutError).unwrap().call0().unwrap();
            let _ = class(py, Deadline::Exit).unwrap().call0().unwrap();
            let after = landed(py, ident);
            assert_eq!(after.count, before + 2);
            assert!(after.ago < GRACE, "{:?} since the last one", after.ago);
        });
    }
}
