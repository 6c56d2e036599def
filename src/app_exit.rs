//! An app's `os._exit()` in the server's process, said in the error log before it happens.
//!
//! `os._exit()` ends the process at once: no exception reaches the request's runner, the
//! client's connection is dropped with no answer, and the only trace was the server's own
//! note of a worker that exited, which nginx writes at `notice` (below the default level).
//! The app's call is logged at `error`, with the request it ran for and where it was made;
//! then the process ends as asked. A child the app forked (multiprocessing's `fork` children
//! end with `os._exit()`) is left alone: it is not the server's process.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;

const WRAPPER: &std::ffi::CStr = c"
import functools
import operator
import os
import sys
import traceback


def say_before_exit(report):
    original = os._exit
    server_pid = os.getpid()

    @functools.wraps(original)
    def _exit(status):
        status = operator.index(status)
        if os.getpid() == server_pid:
            try:
                report(status, ''.join(traceback.format_stack(sys._getframe(1))).rstrip())
            except BaseException:
                pass
        original(status)

    # pickle finds it as os._exit (a ProcessPoolExecutor's submit(os._exit, 1)).
    _exit.__module__ = 'os'
    os._exit = _exit
";

/// The process's exit has begun (Python's finalisation: the `atexit` handlers): an
/// `os._exit()` there (`atexit.register(os._exit, 0)`, which skips Python's teardown) ends no
/// request.
static EXITING: AtomicBool = AtomicBool::new(false);

fn exiting() {
    EXITING.store(true, Ordering::Release);
}

#[pyfunction]
fn report(py: Python<'_>, status: i64, stack: &str) {
    let (suffix, route) = crate::logging_bridge::python_origin(py);
    // Written at once, wherever the log goes: the process ends next.
    crate::server_log::last_words(|| {
        crate::server_log::routed(route, || {
            if EXITING.load(Ordering::Acquire) {
                tracing::info!(
                    target: "wsgi",
                    "the app ended the process's exit with os._exit({status}); called from:\n{stack}"
                );
            } else {
                tracing::error!(
                    target: "wsgi",
                    "the app called os._exit({status}): this process ends now, and every request \
                     in it with it (their clients get no answer){suffix}; called from:\n{stack}"
                );
            }
        })
    });
}

/// Replaces `os._exit` with one that logs the call first (in the server's process only).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    let module = PyModule::from_code(py, WRAPPER, c"ngx_wsgi_app_exit.py", c"ngx_wsgi_app_exit")?;
    module.call_method1("say_before_exit", (wrap_pyfunction!(report, &module)?,))?;
    crate::interpreter::before_finalize(exiting);
    Ok(())
}
