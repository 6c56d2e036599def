//! Starting and stopping the one CPython interpreter of a server process, and attaching the
//! server's threads to it.
//!
//! The server owns the process: Python gets no signal handlers, no `argv`, and its `sys.executable`
//! points at a real python (the build's, or the virtualenv's) rather than at the server binary.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;

/// The python this crate was built against (its `sys.executable` at build time).
pub const BUILD_PYTHON: Option<&str> = option_env!("NGX_WSGI_BUILD_PYTHON");
/// That python's standard library directory (its `sysconfig` stdlib path at build time).
pub const BUILD_STDLIB: Option<&str> = option_env!("NGX_WSGI_BUILD_STDLIB");
/// `MAJOR.MINOR` of the libpython this crate links.
pub const BUILD_PYTHON_VERSION: &str = env!("NGX_WSGI_BUILD_PYTHON_VERSION");

/// Interpreter-wide settings (the server's `http`-level directives).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonSettings {
    /// A virtualenv (has `pyvenv.cfg`) or a Python prefix (`sys.prefix`).
    pub home: Option<PathBuf>,
    /// Extra `sys.path` entries, processed like site directories (`.pth` files honoured).
    pub path: Vec<PathBuf>,
}

/// The initialising thread's state while the GIL is released; `finalize` takes it back.
static MAIN_THREAD_STATE: AtomicPtr<ffi::PyThreadState> = AtomicPtr::new(ptr::null_mut());

thread_local! {
    static THREAD_STATE_KEPT: Cell<bool> = const { Cell::new(false) };
}

/// Whether `initialize` has run in this process and `finalize` has not.
pub fn is_running() -> bool {
    !MAIN_THREAD_STATE.load(Ordering::Acquire).is_null()
}

/// Starts the interpreter on the calling thread and releases the GIL before returning.
pub fn initialize(settings: &PythonSettings) -> Result<(), String> {
    start(settings, true)
}

/// As [`initialize`], in the configuration check's child, whose log is not the server's:
/// `sys.stdout` and `sys.stderr` stay as they are.
pub(crate) fn initialize_for_check(settings: &PythonSettings) -> Result<(), String> {
    start(settings, false)
}

fn start(settings: &PythonSettings, serving: bool) -> Result<(), String> {
    if let Some(home) = &settings.home {
        check_home(home)?;
    }
    pin_code_in_memory();
    crate::signals::reset_in_forked_children();
    crate::forked::this_process_serves();
    // SAFETY: called once per process before any other Python API; the config struct is
    // initialised by PyConfig_InitPythonConfig and cleared before it goes out of scope.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Err("the Python interpreter is already initialised in this process".into());
        }
        let mut config: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut config);
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let mut result = Ok(());
        if let Some(exe) = executable_for(settings.home.as_deref()) {
            let exe = CString::new(exe.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            result = status(ffi::PyConfig_SetBytesString(
                &mut config,
                &mut config.executable,
                exe.as_ptr(),
            ));
        }
        if let (Ok(()), Some(home)) = (&result, &settings.home) {
            if !home.join("pyvenv.cfg").exists() {
                let home = CString::new(home.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
                result = status(ffi::PyConfig_SetBytesString(
                    &mut config,
                    &mut config.home,
                    home.as_ptr(),
                ));
            }
        }
        if result.is_ok() {
            result = status(ffi::Py_InitializeFromConfig(&config));
        }
        ffi::PyConfig_Clear(&mut config);
        result.map_err(|e| format!("cannot start Python {BUILD_PYTHON_VERSION}: {e}"))?;
    }
    // SAFETY: the interpreter was just initialised on this thread, which holds the GIL.
    let py = unsafe { Python::assume_attached() };
    let path_result = crate::python_module::register(py)
        .and_then(|()| add_site_dirs(py, &settings.path))
        .and_then(|()| crate::child_signal_mask::unmask_children(py))
        .and_then(|()| crate::forked::repair_main_thread_in_children(py))
        .and_then(|()| match serving {
            true => crate::std_streams::route(py),
            false => Ok(()),
        })
        .and_then(|()| mark_the_end_of_the_atexit_handlers(py))
        .map_err(|e| crate::traceback::format(py, &e));
    // SAFETY: this thread holds the GIL; the returned state is kept for `finalize`.
    let tstate = unsafe { ffi::PyEval_SaveThread() };
    MAIN_THREAD_STATE.store(tstate, Ordering::Release);
    path_result
}

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
fn mark_the_end_of_the_atexit_handlers(py: Python<'_>) -> PyResult<()> {
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
    let tstate = MAIN_THREAD_STATE.swap(ptr::null_mut(), Ordering::AcqRel);
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

/// Ends the process if what runs after the app's threads were waited for (`atexit` handlers,
/// Python's teardown) has not ended within the shutdown timeout: a handler that waits for a
/// stuck thread (`ThreadPoolExecutor.shutdown(wait=True)`) would otherwise keep the exiting
/// process, an old nginx worker, for ever. Dropping it cancels it.
struct ExitDeadline(Option<std::sync::mpsc::Sender<()>>);

impl ExitDeadline {
    fn start(within: std::time::Duration, what: &'static str) -> ExitDeadline {
        Self::start_exactly(within.max(std::time::Duration::from_secs(1)), what)
    }

    fn start_exactly(within: std::time::Duration, what: &'static str) -> ExitDeadline {
        Self::start_after(within, std::time::Duration::ZERO, what)
    }

    /// With a bound of its own, not the shutdown timeout's: the log gives it in ms alone.
    fn start_own(within: std::time::Duration, what: &'static str) -> ExitDeadline {
        Self::watch(within, std::time::Duration::ZERO, what, false)
    }

    /// Fires `grace` after `within`, a bound past another one; the log names `within`.
    fn start_after(
        within: std::time::Duration,
        grace: std::time::Duration,
        what: &'static str,
    ) -> ExitDeadline {
        Self::watch(within, grace, what, true)
    }

    fn watch(
        within: std::time::Duration,
        grace: std::time::Duration,
        what: &'static str,
        the_setting: bool,
    ) -> ExitDeadline {
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        let watch = move || {
            let end = std::time::Instant::now() + within + grace;
            // The exit's one bound once hurried, shared by its stages (each has a watch); `cut`:
            // it came before this stage's own.
            let cut = loop {
                let (limit, cut) = match hurried_since() {
                    Some(at) if at + HURRIED_BOUND < end => (at + HURRIED_BOUND, true),
                    _ => (end, false),
                };
                let now = std::time::Instant::now();
                if now >= limit {
                    break cut;
                }
                match cancelled.recv_timeout((limit - now).min(HURRY_LOOK)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            };
            {
                let setting = SHUTDOWN_WHAT
                    .get()
                    .map_or("the shutdown timeout", |w| w.as_str());
                let bound = match (cut, the_setting) {
                    (true, _) => format!(
                        "{} ms of a fast stop that came meanwhile",
                        HURRIED_BOUND.as_millis()
                    ),
                    (false, true) => format!("{setting} ({} ms)", within.as_millis()),
                    (false, false) => format!("{} ms", within.as_millis()),
                };
                crate::server_log::last_words(|| {
                    tracing::error!(
                        target: "wsgi",
                        "{what} still running after {bound}; the process exits now"
                    )
                });
                if let Some(act) = LAST_ACT.get() {
                    act();
                }
                // SAFETY: ends the process without running anything more of it (the thread
                // that runs Python's exit is stuck).
                unsafe { libc::_exit(1) };
            }
        };
        match std::thread::Builder::new()
            .name("wsgi-exit".into())
            .spawn(watch)
        {
            Ok(_) => ExitDeadline(Some(cancel)),
            // No thread for it: the exit goes on unwatched, as before.
            Err(_) => ExitDeadline(None),
        }
    }
}

impl Drop for ExitDeadline {
    fn drop(&mut self) {
        // Disconnecting wakes the watcher, which then returns.
        self.0.take();
    }
}

/// What says that the server wants its graceful exit over at once (a fast stop came meanwhile:
/// nginx's master kills a worker still there soon after).
static HURRIED: std::sync::OnceLock<fn() -> bool> = std::sync::OnceLock::new();

/// How long an exit goes on once hurried: what a fast stop gives the atexit handlers.
const HURRIED_BOUND: std::time::Duration = std::time::Duration::from_millis(800);

/// How often an exit's waits look whether they are hurried.
const HURRY_LOOK: std::time::Duration = std::time::Duration::from_millis(50);

/// Has `check` (any thread, no GIL) say whether the exit under way is hurried: its waits for the
/// app's threads and atexit handlers are cut short, as a fast stop's are.
pub fn exit_hurried_by(check: fn() -> bool) {
    let _ = HURRIED.set(check);
}

pub(crate) fn hurried() -> bool {
    hurried_since().is_some()
}

/// What each wait of an exit gets once hurried (the app's threads' join, the ASGI tasks' end,
/// the lifespan shutdown): within [`HURRIED_BOUND`] with what follows them.
pub(crate) const HURRIED_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How a wait cut short by a fast stop names its bound in the log.
pub(crate) fn hurried_wait_named() -> String {
    format!(
        "a fast stop that came during the exit ({} ms)",
        HURRIED_WAIT.as_millis()
    )
}

/// `deadline`, or [`HURRIED_WAIT`] from now when the exit is hurried and that comes first; and
/// whether it was cut so.
pub(crate) fn hurried_deadline(deadline: std::time::Instant) -> (std::time::Instant, bool) {
    let cut = std::time::Instant::now() + HURRIED_WAIT;
    match hurried() && cut < deadline {
        true => (cut, true),
        false => (deadline, false),
    }
}

/// When the exit was first seen hurried, if it was.
fn hurried_since() -> Option<std::time::Instant> {
    static SINCE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    if let Some(at) = SINCE.get() {
        return Some(*at);
    }
    HURRIED
        .get()
        .is_some_and(|check| check())
        .then(|| *SINCE.get_or_init(std::time::Instant::now))
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

/// How long a server process's exit waits for the app's threads and its lifespan shutdown
/// unless the server's configuration says otherwise (`wsgi_shutdown_timeout`,
/// `NgxWsgiShutdownTimeout`).
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What bounds the wait for the app's threads, as the server's configuration calls it (for the
/// log line, e.g. "wsgi_shutdown_timeout").
static SHUTDOWN_WHAT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What the process does last when its exit deadline ends it (the configuration check ends the
/// processes the apps started).
static LAST_ACT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Has `act` run just before an exit deadline ends the process (once per process).
pub(crate) fn before_deadline_exit(act: fn()) {
    let _ = LAST_ACT.set(act);
}

/// Names the server's setting that bounds [`finalize`]'s wait for the app's threads.
pub fn name_shutdown_timeout(name: &str) {
    let _ = SHUTDOWN_WHAT.set(name.to_owned());
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

/// Daemon threads (an app's own, or those its libraries start) keep running after
/// `Py_FinalizeEx` until the process exits. A server that unloads its modules at exit (nginx
/// destroys the cycle, which `dlclose`s them) would unmap the code they run in, and they would
/// crash the exiting process.
/// Marking this code and libpython `RTLD_NODELETE` keeps them mapped until the process ends.
fn pin_code_in_memory() {
    let anchors: [*const libc::c_void; 2] = [
        pin_code_in_memory as *const libc::c_void,
        ffi::Py_IsInitialized as *const libc::c_void,
    ];
    for anchor in anchors {
        // SAFETY: dladdr only reads the loader's tables; dlopen with RTLD_NOLOAD never loads
        // anything new, it only adds a reference (never released) and the NODELETE flag.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            if libc::dladdr(anchor, &mut info) != 0 && !info.dli_fname.is_null() {
                libc::dlopen(
                    info.dli_fname,
                    libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
                );
            }
        }
    }
}

fn status(status: ffi::PyStatus) -> Result<(), String> {
    // SAFETY: PyStatus is a plain struct returned by CPython; err_msg is NULL or a static string.
    unsafe {
        if ffi::PyStatus_Exception(status) == 0 {
            return Ok(());
        }
        if status.err_msg.is_null() {
            Err(format!("exit code {}", status.exitcode))
        } else {
            Err(CStr::from_ptr(status.err_msg)
                .to_string_lossy()
                .into_owned())
        }
    }
}

/// The python executable the interpreter should consider itself to be.
fn executable_for(home: Option<&Path>) -> Option<PathBuf> {
    if let Some(home) = home {
        for name in [
            format!("python{BUILD_PYTHON_VERSION}"),
            "python3".into(),
            "python".into(),
        ] {
            let exe = home.join("bin").join(name);
            if exe.exists() {
                return Some(exe);
            }
        }
        return None;
    }
    BUILD_PYTHON.map(PathBuf::from)
}

/// Rejects a home that cannot work with the libpython this crate links, with a message that
/// says why (the classic symptom otherwise is "No module named 'encodings'" at start).
pub fn check_home(home: &Path) -> Result<(), String> {
    match std::fs::metadata(home) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", home.display())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // SAFETY: plain syscalls.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            return Err(format!(
                "{} cannot be reached by uid {uid} gid {gid} (the workers' user): a directory on \
                 its way is closed to it ({e})",
                home.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} is not a directory (it does not exist)",
                home.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", home.display())),
    }
    let cfg = home.join("pyvenv.cfg");
    if cfg.exists() {
        let text = std::fs::read_to_string(&cfg)
            .map_err(|e| format!("cannot read {}: {e}", cfg.display()))?;
        let value_of = |keys: &[&str]| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                keys.contains(&key.trim()).then(|| value.trim().to_owned())
            })
        };
        if let Some(version) = value_of(&["version", "version_info"]) {
            let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
            if minor != BUILD_PYTHON_VERSION {
                return Err(format!(
                    "{} is Python {minor}; this module embeds Python {BUILD_PYTHON_VERSION}",
                    home.display()
                ));
            }
        }
        if let (Some(base), Some(embedded)) = (value_of(&["home"]), BUILD_STDLIB) {
            if let Some(other) = other_stdlib(Path::new(&base), Path::new(embedded)) {
                return Err(format!(
                    "{} is a virtualenv of another Python {BUILD_PYTHON_VERSION} installation \
                     (the one in {base}, whose standard library is {}); this module embeds the one \
                     whose standard library is {embedded}, and the C extensions of one do not load \
                     in the other: make the virtualenv with {} -m venv",
                    home.display(),
                    other.display(),
                    BUILD_PYTHON.unwrap_or("that python")
                ));
            }
        }
        return Ok(());
    }
    let stdlib = home
        .join("lib")
        .join(format!("python{BUILD_PYTHON_VERSION}"));
    if !stdlib.join("os.py").exists() {
        return Err(format!(
            "{} has no lib/python{BUILD_PYTHON_VERSION}/os.py: not a Python {BUILD_PYTHON_VERSION} prefix or virtualenv",
            home.display()
        ));
    }
    Ok(())
}

/// The standard library a virtualenv whose base is the python in `base` (its `pyvenv.cfg`'s
/// `home`, a `bin` directory) gets, when it is known to be another than `embedded`.
fn other_stdlib(base: &Path, embedded: &Path) -> Option<PathBuf> {
    let stdlib = base
        .parent()?
        .join("lib")
        .join(format!("python{BUILD_PYTHON_VERSION}"));
    if !stdlib.join("os.py").exists() {
        // Not laid out as a prefix (a python linked into another bin directory): not known.
        return None;
    }
    let same = match (stdlib.canonicalize(), embedded.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => return None,
    };
    (!same).then_some(stdlib)
}

fn add_site_dirs(py: Python<'_>, dirs: &[PathBuf]) -> PyResult<()> {
    if dirs.is_empty() {
        return Ok(());
    }
    let site = py.import("site")?;
    for dir in dirs {
        site.call_method1("addsitedir", (dir.as_os_str(),))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_thread_that_ends_leaves_no_thread_listed_alive() {
        crate::testing::with_python(|_| ());
        let (ident, thread) = std::thread::spawn(|| {
            let found = attach(|py| {
                let threading = py.import("threading").unwrap();
                let me = threading.call_method0("current_thread").unwrap();
                assert!(!me.getattr("daemon").unwrap().extract::<bool>().unwrap());
                let ident = me.getattr("ident").unwrap().extract::<u64>().unwrap();
                (ident, me.unbind())
            });
            forget_thread();
            found
        })
        .join()
        .unwrap();
        crate::testing::with_python(|py| {
            let threading = py.import("threading").unwrap();
            let active = threading.getattr("_active").unwrap();
            // Another test's thread may have the same ident by now (it is reused): its own
            // entry is not this one.
            let listed = active.call_method1("get", (ident,)).unwrap();
            assert!(
                !listed.is(thread.bind(py)),
                "thread {ident} is still listed"
            );
        });
    }

    #[test]
    fn home_must_match_the_embedded_version() {
        let dir = std::env::temp_dir().join(format!("ngx-wsgi-venv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pyvenv.cfg"),
            "home = /usr/bin\nversion = 2.7.18\n",
        )
        .unwrap();
        let err = check_home(&dir).unwrap_err();
        assert!(
            err.contains("is Python 2.7; this module embeds Python"),
            "{err}"
        );
        std::fs::write(
            dir.join("pyvenv.cfg"),
            format!("version = {BUILD_PYTHON_VERSION}.4\n"),
        )
        .unwrap();
        assert_eq!(check_home(&dir), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(check_home(&dir).unwrap_err().contains("is not a directory"));
    }

    #[test]
    fn a_virtualenv_must_be_of_the_embedded_installation() {
        let root = std::env::temp_dir().join(format!("ngx-wsgi-other-{}", std::process::id()));
        let stdlib = root
            .join("lib")
            .join(format!("python{BUILD_PYTHON_VERSION}"));
        std::fs::create_dir_all(&stdlib).unwrap();
        std::fs::write(stdlib.join("os.py"), "").unwrap();
        let embedded = Path::new(BUILD_STDLIB.unwrap());
        assert_eq!(
            other_stdlib(&root.join("bin"), embedded),
            Some(stdlib.clone())
        );
        // The embedded installation's own bin directory, and one that is no prefix.
        let own_bin = embedded.parent().unwrap().parent().unwrap().join("bin");
        assert_eq!(other_stdlib(&own_bin, embedded), None);
        assert_eq!(other_stdlib(&root.join("lib").join("bin"), embedded), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
