//! The interpreter's thread states: the initialising thread's, kept while the GIL is released
//! until the interpreter's end takes it back, and each server thread's own, kept for its life.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;

/// The initialising thread's state while the GIL is released; `finalize` takes it back.
pub(super) static MAIN_THREAD_STATE: AtomicPtr<ffi::PyThreadState> =
    AtomicPtr::new(ptr::null_mut());

thread_local! {
    static THREAD_STATE_KEPT: Cell<bool> = const { Cell::new(false) };
}

/// Whether `initialize` has run in this process and `finalize` has not.
pub fn is_running() -> bool {
    !MAIN_THREAD_STATE.load(Ordering::Acquire).is_null()
}

/// Runs `f` with the GIL on the calling thread, which keeps one Python thread state for its whole
/// life: thread-locals of the app survive between requests, and attaching costs no allocation.
pub fn attach<F, R>(f: F) -> R
where
    F: for<'py> FnOnce(Python<'py>) -> R,
{
    THREAD_STATE_KEPT.with(|kept| {
        if !kept.get() {
            // SAFETY: the interpreter is running (callers run after `initialize`). Ensure creates
            // this thread's state and takes the GIL; never releasing that first Ensure keeps the
            // state; SaveThread then gives the GIL back.
            unsafe {
                ffi::PyGILState_Ensure();
                // SAFETY: the Ensure above holds the GIL until the SaveThread below.
                serve_as_non_daemon(Python::assume_attached());
                ffi::PyEval_SaveThread();
            }
            kept.set(true);
        }
    });
    Python::attach(f)
}

/// Python sees a server thread as a dummy `Thread`, a daemon one, and a thread the app starts
/// inherits `daemon` from the thread that starts it: one started while a request runs (work
/// left after the response) would be a daemon thread, killed unjoined at the worker's exit,
/// where under gunicorn or a script it is waited for. The server thread says it is not one.
fn serve_as_non_daemon(py: Python<'_>) {
    // A threading module an app replaced (eventlet's) may not have these: its threads stay so.
    let _ = (|| -> PyResult<()> {
        let threading = py.import("threading")?;
        let current = threading.call_method0("current_thread")?;
        if current.is_instance(&threading.getattr("_DummyThread")?)? {
            current.setattr("_daemonic", false)?;
        }
        Ok(())
    })();
}

/// Deletes the calling thread's kept Python thread state (a server thread that is about to end);
/// nothing if it has none.
pub fn forget_thread() {
    THREAD_STATE_KEPT.with(|kept| {
        if kept.get() {
            // SAFETY: this thread's state was made by the PyGILState_Ensure in `attach` and is
            // not current (`attach` always returns with the GIL released); restoring it takes the
            // GIL, and the matching Release deletes the state and releases the GIL.
            unsafe {
                let tstate = ffi::PyGILState_GetThisThreadState();
                ffi::PyEval_RestoreThread(tstate);
                // SAFETY: the GIL is held from the Restore above to the Release below.
                unlist_dummy_thread(Python::assume_attached());
                ffi::PyGILState_Release(ffi::PyGILState_STATE::PyGILState_UNLOCKED);
            }
            kept.set(false);
        }
    });
}

/// The threading module keeps the entry of a thread it did not start (a dummy `Thread`) for
/// ever, alive and, for a server thread, non-daemon: a retired pool thread would stay in
/// `threading.enumerate()` and `active_count()`. The thread takes its entry out as it ends.
fn unlist_dummy_thread(py: Python<'_>) {
    let _ = (|| -> PyResult<()> {
        let threading = py.import("threading")?;
        let active = threading.getattr("_active")?;
        let ident = threading.call_method0("get_ident")?;
        let entry = active.call_method1("get", (&ident,))?;
        if entry.is_instance(&threading.getattr("_DummyThread")?)? {
            let lock = threading.getattr("_active_limbo_lock")?;
            lock.call_method0("acquire")?;
            let popped = active.call_method1("pop", (&ident, py.None()));
            lock.call_method0("release")?;
            popped?;
        }
        Ok(())
    })();
}
