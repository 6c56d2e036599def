//! The interpreter's end in a server process: the app's threads joined (bounded), the
//! `atexit` handlers, then Python's teardown, each under an [`ExitDeadline`]; or the handlers
//! alone, for a process that must end while threads are still inside Python.

use std::sync::atomic::Ordering;

use pyo3::ffi;
use pyo3::prelude::*;

use super::exit_deadline::{ExitDeadline, SHUTDOWN_WHAT};
use super::exit_hurry::{hurried, hurried_wait_named, HURRIED_WAIT};
use super::thread_state::{attach, is_running, MAIN_THREAD_STATE};

/// What must stop before the interpreter is finalised (helper threads that run Python).
static BEFORE_FINALIZE: std::sync::Mutex<Vec<fn()>> = std::sync::Mutex::new(Vec::new());

/// What runs with the GIL right before Python's teardown, once the app's threads and `atexit`
/// handlers are done: the server's own references to Python objects let go.
static BEFORE_TEARDOWN: std::sync::Mutex<Vec<fn(Python<'_>)>> = std::sync::Mutex::new(Vec::new());

/// Has [`finalize`] call `hook` with the GIL right before Python's teardown (once, however
/// often this is called with it); not when the process ends without a teardown, nor at a fast
/// stop (whose one short bound covers the whole exit: what the hooks would finalise more is
/// left, as the process ends).
pub fn before_teardown(hook: fn(Python<'_>)) {
    let mut hooks = BEFORE_TEARDOWN.lock().unwrap_or_else(|e| e.into_inner());
    if !hooks.iter().any(|h| std::ptr::fn_addr_eq(*h, hook)) {
        hooks.push(hook);
    }
}

/// Has [`finalize`] call `stop` first (once, however often this is called with it).
pub fn before_finalize(stop: fn()) {
    let mut hooks = BEFORE_FINALIZE.lock().unwrap_or_else(|e| e.into_inner());
    if !hooks.contains(&stop) {
        hooks.push(stop);
    }
}

/// The least time Python's teardown gets at exit, once the app's threads and `atexit` handlers
/// are done (they have the shutdown timeout).
const TEARDOWN_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(30);

/// How a finalisation ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Finalized {
    /// The app's threads ended in time and the interpreter was finalised.
    Cleanly,
    /// Threads of the app were still running at the deadline: their names and stacks were
    /// logged and `atexit` handlers ran, but the interpreter was left as it was. The caller must
    /// end the process without running anything that could meet those threads (`_exit`).
    ThreadsLeft,
}

/// Joins the app's non-daemon threads for at most `timeout`, then finalises the interpreter:
/// the `atexit` handlers within `timeout` again (or a second if that is less), Python's
/// teardown after them within `timeout` or [`TEARDOWN_AT_LEAST`], whichever is longer (see
/// [`Finalizing`]); with `whole_within` (a fast stop, whose exit has a bound), all of it within
/// that. Threads still running at the deadline are logged with their Python stacks and left
/// running: see [`Finalized::ThreadsLeft`]. Must run on the thread that called `initialize`,
/// after every server thread has stopped running Python.
pub fn finalize(
    timeout: std::time::Duration,
    whole_within: Option<std::time::Duration>,
) -> Result<Finalized, String> {
    if MAIN_THREAD_STATE.load(Ordering::Acquire).is_null() {
        return Ok(Finalized::Cleanly);
    }
    let hooks = std::mem::take(&mut *BEFORE_FINALIZE.lock().unwrap_or_else(|e| e.into_inner()));
    for hook in hooks {
        hook();
    }
    let whole = whole_within.map(|within| {
        ExitDeadline::start_exactly(within, "Python's finalisation (atexit handlers included)")
    });
    let part = |what| whole.is_none().then(|| ExitDeadline::start(timeout, what));
    // A thread of the app's that holds the GIL in C code and never lets it go would hold the
    // exit for ever, here or in the join (whose waits give the GIL up): bounded past the
    // join's own timeout, so that it fires only when the GIL does not come back.
    let gil = whole.is_none().then(|| {
        ExitDeadline::start_after(
            timeout,
            timeout.max(std::time::Duration::from_secs(1)),
            "the wait for the GIL (a thread of the app's holds it in C code)",
        )
    });
    let Some(py) = reattach_main_thread() else {
        return Ok(Finalized::Cleanly);
    };
    let joined = join_app_threads(py, timeout);
    drop(gil);
    match joined {
        Ok(None) => {}
        Ok(Some(report)) => {
            // The sentence ends before the stacks, not after their last line.
            let (left, stacks) = report.split_once('\n').unwrap_or((&report, ""));
            tracing::error!(
                target: "wsgi",
                "Python threads still running after {left}; the process exits without \
                 finalising Python, once the atexit handlers have run\n{stacks}"
            );
            let _deadline = part("the atexit handlers");
            run_exit_handlers(py);
            return Ok(Finalized::ThreadsLeft);
        }
        Err(e) => tracing::error!(target: "wsgi", "joining the app's threads at exit failed: {e}"),
    }
    if py
        .import("atexit")
        .and_then(|a| a.call_method0("_ncallbacks"))
        .and_then(|n| n.extract::<usize>())
        .is_ok_and(|n| n == 0)
    {
        // An app cleared the handlers, the server's with them.
        let _ = mark_the_end_of_the_atexit_handlers(py);
    }
    *finalizing() = Some(Finalizing {
        pid: std::process::id(),
        deadline: part("Python's finalisation (atexit handlers included)"),
        teardown_within: whole.is_none().then(|| timeout.max(TEARDOWN_AT_LEAST)),
    });
    // Py_FinalizeEx joins the threads started since, then runs the atexit handlers, the
    // server's last (`after_the_handlers`), then tears Python down.
    // SAFETY: the GIL is held by this, the initialising, thread.
    let rc = unsafe { ffi::Py_FinalizeEx() };
    finalizing().take();
    if rc == 0 {
        Ok(Finalized::Cleanly)
    } else {
        Err("Python finalisation reported an error (buffered data could not be flushed)".into())
    }
}

/// The exit's deadline while `Py_FinalizeEx` runs: the app's part (threads started since the
/// join, the `atexit` handlers) has the shutdown timeout; Python's own teardown after them
/// (modules cleared, their objects finalised: a database connection's close) takes seconds
/// for a large app (NetBox: 3 to 6 s on a loaded machine), CPython's work, not the app's, so
/// it has a bound of its own from the server's `atexit` handler, which runs last.
struct Finalizing {
    /// The finalising process (a child forked meanwhile has a copy of this).
    pid: u32,
    deadline: Option<ExitDeadline>,
    /// The teardown's bound (None: a fast stop, whose one bound covers all).
    teardown_within: Option<std::time::Duration>,
}

static FINALIZING: std::sync::Mutex<Option<Finalizing>> = std::sync::Mutex::new(None);

fn finalizing() -> std::sync::MutexGuard<'static, Option<Finalizing>> {
    FINALIZING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers the server's `atexit` handler before any app is imported: handlers run last
/// registered first, so it runs after all of the apps' (those a `sitecustomize` or a `.pth`
/// file registered as Python started run after it, under the teardown's bound). One an app
/// cleared (`atexit._clear()`) is registered again as the exit begins.
pub(super) fn mark_the_end_of_the_atexit_handlers(py: Python<'_>) -> PyResult<()> {
    let marker = pyo3::types::PyCFunction::new_closure(
        py,
        None,
        None,
        |args: &Bound<'_, pyo3::types::PyTuple>, _kw| -> PyResult<()> {
            after_the_handlers(args.py());
            Ok(())
        },
    )?;
    py.import("atexit")?.call_method1("register", (marker,))?;
    Ok(())
}

/// The apps' `atexit` handlers are done, in [`finalize`]'s `Py_FinalizeEx` (elsewhere, as in
/// the configuration check's exit, an exit with threads left or a child forked meanwhile,
/// nothing is done): the teardown's deadline replaces the app's part's, and the server lets go
/// of its references.
fn after_the_handlers(py: Python<'_>) {
    let mut guard = finalizing();
    let Some(f) = guard.as_mut().filter(|f| f.pid == std::process::id()) else {
        return;
    };
    let Some(within) = f.teardown_within else {
        return;
    };
    f.deadline = Some(ExitDeadline::start_own(
        within,
        "Python's teardown (after the atexit handlers)",
    ));
    drop(guard);
    let hooks = std::mem::take(&mut *BEFORE_TEARDOWN.lock().unwrap_or_else(|e| e.into_inner()));
    for hook in hooks {
        hook(py);
    }
}

/// Takes the GIL back on the initialising thread, for the interpreter's end (the state kept
/// since `initialize` is given up: this runs once); None when Python is not running.
fn reattach_main_thread() -> Option<Python<'static>> {
    let tstate = MAIN_THREAD_STATE.swap(std::ptr::null_mut(), Ordering::AcqRel);
    if tstate.is_null() {
        return None;
    }
    // SAFETY: `tstate` is this thread's state saved by `initialize`; restoring it takes the GIL.
    unsafe { ffi::PyEval_RestoreThread(tstate) };
    // SAFETY: this thread holds the GIL (restored above).
    Some(unsafe { Python::assume_attached() })
}

/// Runs `first` (a report of what is left), then the apps' `atexit` handlers alone, for a
/// process that must end at once while other threads are still inside Python (a fast stop, a
/// blocked event loop): the interpreter is not finalised under them. The process ends if they
/// have not returned within `within`, the wait for the GIL included (a thread left may hold
/// it). Must run on the thread that called `initialize`; the caller ends the process next
/// (`_exit`).
pub fn run_exit_handlers_only(within: std::time::Duration, first: impl FnOnce(Python<'_>)) {
    // Its bound is the caller's (a fast stop's share, not always the shutdown timeout), and it
    // covers the wait for the GIL, which a request's thread stuck in C code may hold.
    let _deadline = ExitDeadline::start_own(within, "the wait for the GIL and the atexit handlers");
    let Some(py) = reattach_main_thread() else {
        return;
    };
    first(py);
    run_exit_handlers(py);
}

/// Joins the app's non-daemon threads until `timeout` ([`HURRIED_WAIT`] once hurried); None
/// when all ended, else the report of those left (names and stacks), beginning with what the
/// deadline was.
fn join_app_threads(py: Python<'_>, timeout: std::time::Duration) -> PyResult<Option<String>> {
    let code = c"
import sys, threading, time, traceback
def _join(timeout, what, hurried, what_hurried, hurried_wait):
    deadline = time.monotonic() + timeout
    hurry, looked = [False], [False]
    def wait(join, until):
        # In short slices: a fast stop that comes meanwhile cuts the wait short.
        while time.monotonic() < until[0]:
            if join(min(until[0] - time.monotonic(), 0.05)):
                return
            if not looked[0] and hurried():
                looked[0] = True
                # Said only where it shortened the wait (a fast stop's own is that short).
                if until[0] > time.monotonic() + hurried_wait:
                    until[0] = time.monotonic() + hurried_wait
                    hurry[0] = True
    until = [deadline]
    # What Python's own exit does before it joins threads: threading's exit callbacks, once
    # (concurrent.futures wakes its idle workers there, which then end). They join what they
    # woke: on a thread of their own, so that a stuck job cannot take the wait beyond timeout.
    if hasattr(threading, '_threading_atexits') and not threading._SHUTTING_DOWN:
        threading._SHUTTING_DOWN = True
        calls = threading._threading_atexits[::-1]
        del threading._threading_atexits[:]
        def run_calls():
            for call in calls:
                try:
                    call()
                except Exception:
                    traceback.print_exc()
        if calls:
            runner = threading.Thread(target=run_calls, name='threading-atexit', daemon=True)
            runner.start()
            wait(lambda t: runner.join(t) or not runner.is_alive(), until)
    main = threading.main_thread()
    dummy = getattr(threading, '_DummyThread', ())  # the server's threads, never joinable
    def left():
        me = threading.current_thread()  # not main_thread() when eventlet patched threading
        return [t for t in threading.enumerate()
                if t is not main and t is not me and not isinstance(t, dummy)
                and not t.daemon and t.is_alive()]
    def join_one(t):
        alive = left()
        if alive:
            alive[0].join(t)
        return not left()
    wait(join_one, until)
    alive = left()
    if not alive:
        return None
    frames = sys._current_frames()
    parts = [(what_hurried if hurry[0] else what) + ': ' + ', '.join(repr(t.name) for t in alive)]
    for t in alive:
        stack = ''.join(traceback.format_stack(frames[t.ident])) if t.ident in frames else '(no stack)\\n'
        parts.append('Thread %r (most recent call last):\\n%s' % (t.name, stack.rstrip()))
    return '\\n'.join(parts)
";
    let globals = pyo3::types::PyDict::new(py);
    py.run(code, Some(&globals), None)?;
    let what = SHUTDOWN_WHAT
        .get()
        .map_or("the shutdown timeout", |w| w.as_str());
    let what = format!("{what} ({} ms)", timeout.as_millis());
    let hurried =
        pyo3::types::PyCFunction::new_closure(py, None, None, |_, _| -> PyResult<bool> {
            Ok(hurried())
        })?;
    let report = globals
        .get_item("_join")?
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("no _join"))?
        .call1((
            timeout.as_secs_f64(),
            what,
            hurried,
            hurried_wait_named(),
            HURRIED_WAIT.as_secs_f64(),
        ))?;
    report.extract()
}

/// What a Python process does as it exits, for the configuration check's child, which then ends
/// without finalising: the apps' `atexit` handlers (a prometheus_client multiprocess app removes
/// its process's files in one), bounded by `within`, and the standard streams flushed.
pub(crate) fn exit_as_python_would(within: std::time::Duration) {
    if !is_running() {
        return;
    }
    let _deadline = ExitDeadline::start(within, "the atexit handlers");
    attach(run_exit_handlers);
}

/// `atexit` handlers and flushed standard streams, for a process that ends without
/// `Py_FinalizeEx`.
fn run_exit_handlers(py: Python<'_>) {
    let result = (|| -> PyResult<()> {
        py.import("atexit")?.call_method0("_run_exitfuncs")?;
        crate::std_streams::flush(py)
    })();
    if let Err(e) = result {
        tracing::error!(target: "wsgi", "running atexit handlers: {}", crate::traceback::format(py, &e));
    }
}
