//! Waits that a timed-out request's `TimeoutError` cannot end by itself. An asynchronous
//! exception lands when the thread runs Python code again; a thread blocked in a C call that
//! retries on its own (a lock, `waitpid`) keeps it pending until the call returns, which for
//! these may be never, and the thread (or the ASGI event loop) is lost meanwhile:
//!
//! - a `threading.Condition` wait with no timeout, which only another thread's notify ends
//!   (`Event.wait()`, `Queue.get()`, `Future.result()`, and asgiref's `async_to_sync`, under a
//!   Django async view served by WSGI): the wait's own lock is released for it, so the lock call
//!   returns and the exception lands (to the wait it is a spurious wake-up, which a condition's
//!   users allow for; `notify` passes over a lock already released); `async_to_sync`'s
//!   coroutine, on a loop of its own in another thread, is cancelled;
//! - `subprocess.run`'s wait for its child: the child is killed, as `run` does itself when its
//!   own timeout passes, or on any exception that reaches it.
//!
//! The watchdog finds the wait (Python code), checks that the thread still runs the request, sets
//! the exception and ends the wait, with no Python code between the check and the lock's release
//! (a C method); the rest runs after, on objects of the timed-out request's own.

use pyo3::prelude::*;
use pyo3::types::PyModule;

use crate::embedded_module::EmbeddedModule;

const FINDER: &std::ffi::CStr = c"
import _thread
import sys
import threading

_CONDITION_WAIT = threading.Condition.wait.__code__


def find(ident):
    frame = sys._current_frames().get(ident)
    if frame is None:
        return None
    if frame.f_code is _CONDITION_WAIT:
        waiter = frame.f_locals.get('waiter')
        if type(waiter) is _thread.LockType:
            return 'condition', waiter, _async_to_sync_executor(frame.f_back)
    while frame is not None:
        if frame.f_code.co_name == 'run' and frame.f_globals.get('__name__') == 'subprocess':
            process = frame.f_locals.get('process')
            if getattr(process, 'returncode', 0) is None:
                return 'subprocess', process, None
            return None
        frame = frame.f_back
    return None


def _async_to_sync_executor(frame):
    for _ in range(3):
        if frame is None:
            return None
        if (frame.f_code.co_name == 'run_until_future'
                and frame.f_globals.get('__name__') == 'asgiref.current_thread_executor'):
            return frame.f_locals.get('self')
        frame = frame.f_back
    return None


def cancel_async_to_sync(executor):
    sync = sys.modules.get('asgiref.sync')
    loops = getattr(getattr(sync, 'AsyncToSync', None), 'loop_thread_executors', {})
    for loop, waiting in list(loops.items()):
        if waiting is executor:
            loop.call_soon_threadsafe(_cancel_tasks, loop)


def _cancel_tasks(loop):
    import asyncio
    for task in asyncio.all_tasks(loop):
        task.cancel()
";

static MODULE: EmbeddedModule = EmbeddedModule::new(
    FINDER,
    c"ngx_wsgi_blocking_wait.py",
    c"ngx_wsgi_blocking_wait",
);

fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    MODULE.get(py)
}

/// A wait of the thread that runs a timed-out request, which its exception cannot end.
pub(crate) enum BlockingWait<'py> {
    Condition {
        /// The lock the wait blocks on.
        waiter: Bound<'py, PyAny>,
        /// asgiref's executor, when the wait is `async_to_sync`'s for its coroutine.
        async_to_sync: Option<Bound<'py, PyAny>>,
    },
    /// `subprocess.run`'s `Popen`, whose child runs on.
    SubprocessRun(Bound<'py, PyAny>),
}

/// The wait the thread `ident` is in, if one of those. Python code: the caller checks
/// afterwards that the thread still runs the timed-out request.
pub(crate) fn find(py: Python<'_>, ident: u64) -> Option<BlockingWait<'_>> {
    let found = module(py)
        .and_then(|m| m.call_method1("find", (ident,)))
        .ok()?;
    let (kind, object, executor) = found
        .extract::<(String, Bound<'_, PyAny>, Bound<'_, PyAny>)>()
        .ok()?;
    Some(match kind.as_str() {
        "condition" => BlockingWait::Condition {
            waiter: object,
            async_to_sync: (!executor.is_none()).then_some(executor),
        },
        _ => BlockingWait::SubprocessRun(object),
    })
}

/// Ends the wait, for the exception just set in its thread. Its first step, a condition's lock
/// released, runs no Python code: the caller may set the exception, then call this, with none
/// between.
pub(crate) fn end(wait: Option<BlockingWait<'_>>) {
    match wait {
        None => {}
        Some(BlockingWait::Condition {
            waiter,
            async_to_sync,
        }) => {
            if let Err(e) = waiter.call_method0("release") {
                // Already released: the thread was notified meanwhile.
                drop(e);
            }
            if let Some(executor) = async_to_sync {
                let py = executor.py();
                let cancelled =
                    module(py).and_then(|m| m.call_method1("cancel_async_to_sync", (executor,)));
                if let Err(e) = cancelled {
                    tracing::warn!(
                        target: "wsgi",
                        "cannot cancel the timed-out request's async_to_sync coroutine: {e}"
                    );
                }
            }
        }
        Some(BlockingWait::SubprocessRun(process)) => {
            // `kill` polls first: a child reaped meanwhile is left alone.
            if let Err(e) = process.call_method0("kill") {
                tracing::warn!(
                    target: "wsgi",
                    "cannot kill the timed-out request's subprocess.run child: {e}"
                );
            }
        }
    }
}
