//! Processes an app forks (`os.fork()`, `multiprocessing`'s fork): the server's sockets are not
//! theirs, and one that returns from the app into the server ends there.
//!
//! A forked child that keeps the server's listening sockets keeps the port bound after the
//! server stops or reloads; one that keeps a client's connection keeps it open after the
//! server has closed it (an HTTP/1.0 client waits for the end of the response until the child
//! exits). A child that returns from the app would run the server's code with none of its
//! other threads: it can only hang, holding what it inherited.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::PyInt;

/// The process that serves requests (set when its interpreter starts).
static SERVER_PID: AtomicI32 = AtomicI32::new(0);
/// Set in every child forked after that: a load, where a getpid() would be a system call.
static FORKED: AtomicBool = AtomicBool::new(false);

/// Records the calling process as the server's.
pub fn this_process_serves() {
    // SAFETY: getpid has no preconditions.
    SERVER_PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| in_every_forked_child(mark_forked));
}

/// A child forked from a server thread keeps, as its main thread, the dummy `Thread` Python
/// made for that server thread (which the server makes for each of its threads: see
/// `interpreter::attach`). On Python 3.11 and 3.12 that one has no state lock, and the child's
/// exit as Python's (`multiprocessing` calls `threading._shutdown()`) fails on it: the child
/// ends with status 1 without joining its threads. Run after `threading`'s own fork hook, this
/// makes it a real main thread in the child, as Python 3.13 does itself.
pub(crate) fn repair_main_thread_in_children(py: Python<'_>) -> PyResult<()> {
    let code = c"
import os, threading
def _main_thread_after_fork(threading=threading):
    try:
        main = threading.main_thread()
        if type(main) is not threading._DummyThread:
            return
        main.__class__ = threading._MainThread
        main._name = 'MainThread'
        main._daemonic = False
        if getattr(main, '_tstate_lock', False) is None:
            main._set_tstate_lock()
    except Exception:
        pass  # a threading module an app replaced: its own rules
os.register_at_fork(after_in_child=_main_thread_after_fork)
";
    let globals = pyo3::types::PyDict::new(py);
    py.run(code, Some(&globals), None)?;
    free_tempfile_lock_in_children(py)
}

/// `tempfile` finds its directory once, under a module lock, at its first use: a process forked
/// by one thread while another held that lock (a `multiprocessing` start or a temporary file in
/// another request) had it locked for good, and hung at its own first temporary file
/// (`multiprocessing`'s fork Manager does one at its start). Measured: 75 of 120 such Managers
/// under load. The child has only the forking thread, so no one else can be inside: the lock
/// is made anew in it (as `threading` and `logging` do with theirs).
fn free_tempfile_lock_in_children(py: Python<'_>) -> PyResult<()> {
    let code = c"
import os, sys
def _tempfile_lock_after_fork(sys=sys):
    lock = getattr(sys.modules.get('tempfile'), '_once_lock', None)
    reinit = getattr(lock, '_at_fork_reinit', None)
    if reinit is not None:
        reinit()
os.register_at_fork(after_in_child=_tempfile_lock_after_fork)
";
    let globals = pyo3::types::PyDict::new(py);
    py.run(code, Some(&globals), None)
}

/// In a forked child: an atomic store, async-signal-safe.
extern "C" fn mark_forked() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Whether this is a process the app forked, not the server's own.
#[inline]
pub fn in_forked_child() -> bool {
    FORKED.load(Ordering::Relaxed)
}

/// Runs `handler` in every child forked from now on, in the child before `fork()` returns
/// there: only async-signal-safe work (the child's one thread may have forked while another
/// held a lock). For each process, once.
pub fn in_every_forked_child(handler: extern "C" fn()) {
    // SAFETY: registers a plain function; it runs in forked children only.
    unsafe { libc::pthread_atfork(None, None, Some(handler)) };
}

/// How a forked child came back into the server.
pub enum Back<'a> {
    /// The app returned (or yielded the next item of its body).
    Returned,
    /// The app raised (`sys.exit()` included).
    Raised(&'a PyErr),
    /// It used the request's channel to the server (an ASGI `receive()` or `send()`), which
    /// nobody serves in the child: it would wait forever.
    UsedTheRequest,
}

impl<'a> Back<'a> {
    /// After a call of the app's that gave `result`.
    pub fn after<T>(result: &'a PyResult<T>) -> Self {
        match result {
            Ok(_) => Back::Returned,
            Err(e) => Back::Raised(e),
        }
    }
}

/// Ends a forked child that came back into the server (called with the GIL held, where the
/// server takes the app's result or message), with the status Python gives an uncaught end:
/// `sys.exit()`'s code, 1 for an exception. Said on stderr, which is the server's error log:
/// the server's log machinery lives in threads the child does not have.
#[inline]
pub fn exit_if_forked_child(py: Python<'_>, interface: &str, back: Back<'_>) {
    // Called for every ASGI message: the server's process pays a load and a branch.
    if in_forked_child() {
        exit_forked_child(py, interface, back);
    }
}

/// [`exit_if_forked_child`] where an ASGI task ended, with the exception it raised if any.
#[inline]
pub fn exit_if_forked_task_ended(
    py: Python<'_>,
    interface: &str,
    error: Option<&Bound<'_, PyAny>>,
) {
    if in_forked_child() {
        let raised = error.map(|e| PyErr::from_value(e.clone()));
        exit_forked_child(
            py,
            interface,
            raised.as_ref().map_or(Back::Returned, Back::Raised),
        );
    }
}

#[cold]
#[inline(never)]
fn exit_forked_child(py: Python<'_>, interface: &str, back: Back<'_>) -> ! {
    let mut interrupted = false;
    let (how, status) = match back {
        Back::Returned => ("returned from it into the server".to_owned(), 0),
        Back::UsedTheRequest => (
            "called the request's receive() or send(), which only the server's process serves"
                .to_owned(),
            0,
        ),
        Back::Raised(err) if err.is_instance_of::<PySystemExit>(py) => {
            let (text, status) = system_exit(py, err);
            (format!("called sys.exit({text}) into the server"), status)
        }
        Back::Raised(err) => {
            interrupted = err.is_instance_of::<PyKeyboardInterrupt>(py);
            (
                format!(
                    "raised into the server:\n{}\n",
                    crate::traceback::format(py, err)
                ),
                1,
            )
        }
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let ends = if interrupted {
        "ends on SIGINT, as Python does after a KeyboardInterrupt".to_owned()
    } else {
        format!("exits with status {status}")
    };
    let line = format!(
        "{interface}: process {pid}, forked by the application, {how} and {ends} (a forked \
         child should end with os._exit())\n"
    );
    // A plain write(2): a lock of stderr's that another thread held at the fork stays held.
    // SAFETY: writes `line`'s bytes to the error log's descriptor.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    ENDING_STATUS.store(status, Ordering::Relaxed);
    ENDING_INTERRUPTED.store(interrupted, Ordering::Relaxed);
    let _ = DEADLINE_LINE.set(format!(
        "{interface}: process {pid}, forked by the application: its sys.stdout or sys.stderr \
         could not be flushed in {FLUSH_DEADLINE_SECS} s (a lock another thread held at the \
         fork, or a full pipe); what it buffered is lost\n"
    ));
    flush_before_exit(py);
    end(status, interrupted)
}

/// How a forked child that came back ends, for [`flush_deadline`]: its exit status, and
/// whether it ends on SIGINT instead.
static ENDING_STATUS: AtomicI32 = AtomicI32::new(0);
static ENDING_INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ends this process with `status`, or on SIGINT, as Python does after an uncaught
/// KeyboardInterrupt; async-signal-safe.
fn end(status: i32, interrupted: bool) -> ! {
    if interrupted {
        // SAFETY: the default action of SIGINT ends this process, which is the point.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::kill(libc::getpid(), libc::SIGINT);
        }
    }
    // SAFETY: ends this process at once; nothing of the server's may run in it.
    unsafe { libc::_exit(status) }
}

/// What the child printed and Python still buffers, written out as Python's own exit (and
/// multiprocessing's children) would. A buffer's lock that a thread of the server's process
/// held at the fork is never released in the child: a timer ends a flush that waits for one
/// (every forked child starts with no signal blocked: `signals::reset_in_forked_children`).
fn flush_before_exit(py: Python<'_>) {
    // SAFETY: a handler and a timer for this process alone, which is about to end; the
    // handler only writes and ends the process (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGALRM,
            flush_deadline as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::alarm(FLUSH_DEADLINE_SECS);
    }
    // A stream that cannot flush (a closed pipe) loses what it held, as it would at Python's
    // exit.
    let _ = crate::std_streams::flush(py);
    // SAFETY: cancels this process's timer: the flush is over.
    unsafe { libc::alarm(0) };
}

/// How long a forked child's last flush may wait.
const FLUSH_DEADLINE_SECS: u32 = 2;

/// What [`flush_deadline`] says, written before the flush (a signal handler cannot format).
static DEADLINE_LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

extern "C" fn flush_deadline(_: libc::c_int) {
    if let Some(line) = DEADLINE_LINE.get() {
        // SAFETY: writes a finished line to the error log's descriptor (async-signal-safe).
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    }
    end(
        ENDING_STATUS.load(Ordering::Relaxed),
        ENDING_INTERRUPTED.load(Ordering::Relaxed),
    )
}

/// `SystemExit`'s code as Python's own exit reads it: None is 0, an int is itself (the low 8
/// bits reach the parent), anything else is printed and is 1. With the code's text.
fn system_exit(py: Python<'_>, err: &PyErr) -> (String, i32) {
    let code = err.value(py).getattr("code").ok();
    match code {
        None => (String::new(), 1),
        Some(c) if c.is_none() => (String::new(), 0),
        // Python reads an int code as a C long cast to int, -1 when it overflows a long; an
        // object that only has `__index__` is not an int there.
        Some(c) if c.is_instance_of::<PyInt>() => {
            let text = c.str().map_or_else(|_| "?".to_owned(), |r| r.to_string());
            (text, c.extract::<i64>().map_or(-1, |n| n as i32))
        }
        Some(c) => (
            c.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string()),
            1,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_exit_codes_are_pythons() {
        crate::testing::with_python(|py| {
            let code = |arg: &str| {
                let err = py
                    .run(
                        &std::ffi::CString::new(format!("raise SystemExit({arg})")).unwrap(),
                        None,
                        None,
                    )
                    .unwrap_err();
                system_exit(py, &err)
            };
            assert_eq!(code(""), (String::new(), 0));
            assert_eq!(code("None"), (String::new(), 0));
            assert_eq!(code("3"), ("3".to_owned(), 3));
            assert_eq!(code("'bye'"), ("'bye'".to_owned(), 1));
            assert_eq!(code("True"), ("True".to_owned(), 1));
            assert_eq!(code("-1"), ("-1".to_owned(), -1));
            assert_eq!(code("2**40 + 3"), ("1099511627779".to_owned(), 3));
            assert_eq!(
                code("2**70").1,
                -1,
                "an overflowing int is C's -1, exit status 255"
            );
            let index_only =
                "type('I', (), {'__index__': lambda s: 5, '__repr__': lambda s: 'I()'})()";
            assert_eq!(
                code(index_only),
                ("I()".to_owned(), 1),
                "not an int to Python's exit"
            );
        });
    }

    #[test]
    fn the_server_is_not_a_forked_child_and_its_child_is() {
        assert!(!in_forked_child(), "before the server is known: no");
        this_process_serves();
        assert!(!in_forked_child());
        // SAFETY: the child only reads an atomic and calls getpid and _exit.
        match unsafe { libc::fork() } {
            // SAFETY: in the child: _exit ends it without running the test harness.
            0 => unsafe { libc::_exit(if in_forked_child() { 7 } else { 1 }) },
            pid => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(libc::WEXITSTATUS(status), 7);
            }
        }
    }
}
