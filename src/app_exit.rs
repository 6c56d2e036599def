//! An app's `os._exit()` in the server's process, said in the error log before it happens.
//!
//! `os._exit()` ends the process at once: no exception reaches the request's runner, the
//! client's connection is dropped with no answer, and the only trace was the server's own
//! note of a worker that exited, which nginx writes at `notice` (below the default level).
//! The app's call is logged at `error`, with the request it ran for and where it was made;
//! then the process ends as asked. A child the app forked (multiprocessing's `fork` children
//! end with `os._exit()`) is left alone: it is not the server's process.

use pyo3::prelude::*;

const WRAPPER: &std::ffi::CStr = c"
import functools
import os
import sys
import traceback


def say_before_exit(report):
    original = os._exit
    server_pid = os.getpid()

    @functools.wraps(original)
    def _exit(status):
        if os.getpid() == server_pid:
            try:
                report(repr(status), ''.join(traceback.format_stack(sys._getframe(1))).rstrip())
            except BaseException:
                pass
        original(status)

    os._exit = _exit
";

#[pyfunction]
fn report(py: Python<'_>, status: &str, stack: &str) {
    let (suffix, route) = crate::logging_bridge::python_origin(py);
    crate::server_log::routed(route, || {
        tracing::error!(
            target: "wsgi",
            "the app called os._exit({status}): this process ends now, and every request in it \
             with it (their clients get no answer){suffix}; called from:\n{stack}"
        )
    });
}

/// Replaces `os._exit` with one that logs the call first (in the server's process only).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    let module = PyModule::from_code(py, WRAPPER, c"ngx_wsgi_app_exit.py", c"ngx_wsgi_app_exit")?;
    module.call_method1("say_before_exit", (wrap_pyfunction!(report, &module)?,))?;
    Ok(())
}
