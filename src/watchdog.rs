//! Request timeouts on the Python side: the process's one watchdog thread finds the Python thread
//! that runs a timed-out request, logs its stack, and interrupts it with an asynchronous
//! `TimeoutError`, so that its server thread comes back once Python regains control. At a
//! worker's exit it also ends the wait of an app whose event stream the server ended
//! ([`RequestWatch::end_wait_for_exit`]).
//!
//! Timed-out requests are queued to that thread, which is started at the first timeout and
//! stopped before the interpreter is finalised: a burst of stuck requests is a burst of queue
//! entries, never a burst of threads. While another thread holds the GIL the queue just grows;
//! the next time the watchdog gets the GIL it handles everything queued so far.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::timeout_exit::{self, Deadline, GRACE};

/// Where one request runs Python. Both transitions happen with the GIL held, so an interrupt
/// (which also holds the GIL) never lands in the thread's next request.
#[derive(Debug, Default)]
pub struct RequestWatch {
    running: AtomicBool,
    /// The deadline passed: a request that has not started yet must not start.
    expired: AtomicBool,
    /// The request got into Python at some point.
    started: AtomicBool,
    /// An asynchronous exception was set in the request's thread.
    interrupted: AtomicBool,
    /// `TimeoutExit` was set at least once (the app caught its `TimeoutError`).
    exited: AtomicBool,
    /// The server ended the response while the thread waited for it (see [`Self::response_cut`]).
    cut: AtomicBool,
    /// `ClientDisconnected` was set in the thread, its event stream ended at the worker's exit
    /// (see [`Self::end_wait_for_exit`]).
    woken_for_exit: AtomicBool,
    thread: AtomicU64,
}

/// Runs its argument with the server's log context of one request, so that the watchdog's entry
/// about it goes where the request's own entries go (Apache: its virtual host's error log).
pub type LogScope = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// Writes the log entries of `write` in `scope`, when there is one.
fn in_scope(scope: Option<&LogScope>, write: &mut dyn FnMut()) {
    match scope {
        Some(scope) => scope(write),
        None => write(),
    }
}

impl RequestWatch {
    /// The request's thread is about to run the app; false when its deadline already passed
    /// while it waited for a thread (then it must not run at all).
    pub(crate) fn enter(&self, _py: Python<'_>) -> bool {
        // Noted before the deadline's flag is read, as the deadline notes its flag before it
        // reads this one (all four sequentially consistent): a deadline passing now either
        // stops the request here or sees it started (and counts its thread lost).
        self.started.store(true, Ordering::SeqCst);
        if self.expired.load(Ordering::SeqCst) {
            self.started.store(false, Ordering::Relaxed);
            return false;
        }
        // SAFETY: plain query of the calling thread's identity.
        let ident = unsafe { ffi::PyThread_get_thread_ident() };
        self.thread.store(ident as u64, Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
        true
    }

    pub(crate) fn leave(&self, _py: Python<'_>) {
        self.running.store(false, Ordering::Release);
        // The flags change with the GIL held, which this thread holds now.
        if !self.interrupted.load(Ordering::Acquire) && !self.woken_for_exit.load(Ordering::Acquire)
        {
            return;
        }
        // An interrupt set while the thread ran no bytecode (Rust or C code, a wait) would
        // otherwise fire in the thread's next request.
        // SAFETY: the GIL is held; NULL clears this thread's pending asynchronous exception.
        unsafe {
            ffi::PyThreadState_SetAsyncExc(
                self.thread.load(Ordering::Relaxed) as _,
                std::ptr::null_mut(),
            )
        };
    }

    /// Whether a thread took the request into Python (it may have left it since).
    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// The deadline's `TimeoutError` was set in the request's thread (and not taken back): one
    /// the app raises now (or a `TimeoutExit`) is most likely it, the request already answered
    /// for its timeout.
    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    /// The server ended the response (its client went away, or its deadline cut it) while the
    /// request's thread waited for it, outside the app's code. Past the deadline, the
    /// iterable's `close()` that follows is the app's clean-up and runs to its end: the
    /// deadline's `TimeoutError`, set while the thread waited, would land there, on its first
    /// line; it is taken back, and none is set from now on. Both run with the GIL held, as
    /// [`Self::interrupt`] does.
    pub(crate) fn response_cut(&self, _py: Python<'_>) {
        // A client that went away before any deadline leaves a later one to interrupt
        // close() as it would any of the app's code (one that hangs there must not keep its
        // thread for ever).
        if !self.expired.load(Ordering::Acquire) {
            return;
        }
        self.cut.store(true, Ordering::Release);
        if self.interrupted.swap(false, Ordering::AcqRel) {
            // SAFETY: the GIL is held, on the request's own thread; NULL clears its pending
            // asynchronous exception.
            unsafe {
                ffi::PyThreadState_SetAsyncExc(
                    self.thread.load(Ordering::Relaxed) as _,
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// The server ended the request's event stream as the worker exits (its client reconnects
    /// to the new workers), while the app's thread may wait for its next event in a
    /// `threading.Condition` with no timeout (Flask's common `queue.Queue().get()`), which it
    /// would leave only at that event, keeping the old worker until `worker_shutdown_timeout`:
    /// the watchdog raises `ClientDisconnected` there, as a `write()` to a client gone does, so
    /// that the thread comes back (never waits for the GIL: the event loop calls it).
    pub fn end_wait_for_exit(self: &Arc<Self>) {
        let watch = self.clone();
        submit(Box::new(move |py| watch.wake_for_exit(py)));
    }

    fn may_wake_for_exit(&self) -> bool {
        self.running.load(Ordering::Acquire)
            && !self.interrupted.load(Ordering::Acquire)
            && !self.cut.load(Ordering::Acquire)
            && !self.woken_for_exit.load(Ordering::Acquire)
    }

    fn wake_for_exit(&self, py: Python<'_>) {
        if !self.may_wake_for_exit() {
            return;
        }
        let ident = self.thread.load(Ordering::Relaxed);
        let wait = crate::blocking_wait::find(py, ident)
            .filter(|w| matches!(w, crate::blocking_wait::BlockingWait::Condition { .. }));
        // Finding the wait ran Python code: checked again, with none between the check and the
        // exception, or it would land in the thread's next request.
        if wait.is_none() || !self.may_wake_for_exit() {
            return;
        }
        self.woken_for_exit.store(true, Ordering::Release);
        let class = py.get_type::<crate::response::ClientDisconnected>();
        // SAFETY: the GIL is held; the thread is alive (it runs the request, checked under the
        // GIL); the class is a static type object.
        unsafe { ffi::PyThreadState_SetAsyncExc(ident as _, class.as_ptr()) };
        crate::blocking_wait::end(wait);
    }

    /// Hands the request to the watchdog thread (never waits for the GIL, so the server's event
    /// loop may call it): it logs `what` with the Python stack of the request's thread and
    /// raises `TimeoutError` in it, if the request is still inside Python by then. A request
    /// that has not started by now never starts, even if it gets the GIL before the watchdog.
    pub fn interrupt_in_background(self: &Arc<Self>, what: String) {
        self.expired.store(true, Ordering::SeqCst);
        let watch = self.clone();
        submit(Box::new(move |py| watch.interrupt(py, what, None)));
    }

    /// The same, with the watchdog's log entries written inside `scope`.
    pub fn interrupt_in_background_with(self: &Arc<Self>, what: String, scope: LogScope) {
        self.expired.store(true, Ordering::SeqCst);
        let watch = self.clone();
        submit(Box::new(move |py| {
            watch.interrupt(py, what, Some(Arc::new(scope)))
        }));
    }

    fn interrupt(self: &Arc<Self>, py: Python<'_>, what: String, scope: Option<Arc<LogScope>>) {
        let mut landed = None;
        in_scope(scope.as_deref(), &mut || {
            landed = self.interrupt_now(py, &what)
        });
        if let Some(landed) = landed {
            self.look_again(landed, GRACE, what, scope);
        }
    }

    /// `after` from now, looks at the interrupted request again (see [`Self::look`]);
    /// `landed` is how many of the deadline's exceptions had landed in its thread when the
    /// last was set.
    fn look_again(
        self: &Arc<Self>,
        landed: u64,
        after: Duration,
        what: String,
        scope: Option<Arc<LogScope>>,
    ) {
        let watch = self.clone();
        submit_after(
            after,
            Box::new(move |py| watch.look(py, landed, what, scope)),
        );
    }

    /// Whether the request still runs in the thread its deadline interrupted (not cut while
    /// it waited for its client: its `close()` runs to its end). Checked with the GIL held.
    fn still_interrupted(&self) -> bool {
        self.running.load(Ordering::Acquire)
            && self.interrupted.load(Ordering::Acquire)
            && !self.cut.load(Ordering::Acquire)
    }

    /// A request still inside Python [`GRACE`] after its `TimeoutError` (or `TimeoutExit`)
    /// landed caught it: it gets `TimeoutExit`, which `except Exception` lets through. One
    /// whose exception is still pending (a C call that waits) is looked at again later.
    fn look(
        self: &Arc<Self>,
        py: Python<'_>,
        before: u64,
        what: String,
        scope: Option<Arc<LogScope>>,
    ) {
        if !self.still_interrupted() {
            return;
        }
        let ident = self.thread.load(Ordering::Relaxed);
        let landed = timeout_exit::landed(py, ident);
        if landed.count == before {
            // Still pending in a C call: it lands when the call returns, or now if the call is
            // a wait the watchdog ends (`blocking_wait.rs`) begun since the interrupt.
            let wait = crate::blocking_wait::find(py, ident);
            if self.still_interrupted() {
                crate::blocking_wait::end(wait);
            }
            self.look_again(before, GRACE, what, scope);
            return;
        }
        if landed.ago < GRACE {
            // It landed since the last look: the app has GRACE from then.
            self.look_again(before, GRACE - landed.ago, what, scope);
            return;
        }
        let first = !self.exited.load(Ordering::Relaxed);
        let stack = first.then(|| stack_for_log(py, ident));
        let wait = crate::blocking_wait::find(py, ident);
        // Counting, formatting the stack and finding a wait ran Python code: checked again, with
        // none between the check and the interrupt, or TimeoutExit would land in the thread's
        // next request.
        if !self.still_interrupted() {
            return;
        }
        self.exited.store(true, Ordering::Relaxed);
        timeout_exit::raise_in(py, ident, Deadline::Exit);
        crate::blocking_wait::end(wait);
        if let Some(stack) = stack {
            in_scope(scope.as_deref(), &mut || {
                tracing::error!(
                    target: "wsgi",
                    "{what}; it still runs the app's code {} s after its TimeoutError (the app \
                     caught it): interrupting it with TimeoutExit, a BaseException that `except \
                     Exception` lets through (again while it runs on). Its Python stack (most \
                     recent call last):\n{stack}",
                    GRACE.as_secs(),
                )
            });
        }
        self.look_again(landed.count, GRACE, what, scope);
    }

    /// Logs the timeout and sets the `TimeoutError` when the request still runs; Some(how many
    /// of the deadline's exceptions had landed in its thread before) when it was set.
    fn interrupt_now(&self, py: Python<'_>, what: &str) -> Option<u64> {
        if !self.running.load(Ordering::Acquire) {
            let state = if self.started.load(Ordering::Relaxed) {
                "it left Python before it could be interrupted"
            } else {
                "it was still waiting for a thread or the GIL and will not run"
            };
            tracing::error!(target: "wsgi", "{what}; {state}");
            return None;
        }
        if self.cut.load(Ordering::Acquire) {
            tracing::error!(target: "wsgi", "{what}; {CUT_WHILE_WAITING}");
            return None;
        }
        let ident = self.thread.load(Ordering::Relaxed);
        let stack = stack_for_log(py, ident);
        let landed = timeout_exit::landed(py, ident).count;
        let wait = crate::blocking_wait::find(py, ident);
        // Formatting the stack (and finding a wait) ran Python code, during which the GIL may
        // have gone to the request's thread and the request ended: checked again, with no Python
        // code between the check and the interrupt, or the TimeoutError would land in the
        // thread's next one.
        if !self.running.load(Ordering::Acquire) {
            tracing::error!(target: "wsgi", "{what}; it left Python before it could be interrupted");
            return None;
        }
        if self.cut.load(Ordering::Acquire) {
            tracing::error!(target: "wsgi", "{what}; {CUT_WHILE_WAITING}");
            return None;
        }
        self.interrupted.store(true, Ordering::Release);
        timeout_exit::raise_in(py, ident, Deadline::TimeoutError);
        crate::blocking_wait::end(wait);
        tracing::error!(
            target: "wsgi",
            "{what}; interrupting it with TimeoutError. Its Python stack (most recent call last):\n{stack}"
        );
        Some(landed)
    }
}

/// The watchdog's word on a request whose response was cut while its thread waited.
const CUT_WHILE_WAITING: &str =
    "its response was cut while it waited for its client, and its iterable's close() runs to its end";

/// At most this many timed-out requests' stacks are formatted per second and thread: past it
/// (a burst of timeouts, every request of a location stuck on one dependency) each is logged
/// without its stack, so that the watchdog (or the event loop) keeps up and the log stays
/// readable.
const STACKS_PER_SECOND: u32 = 10;

thread_local! {
    /// The second of the last stack formatted on this thread, and how many were in it.
    static STACKS_FORMATTED: std::cell::Cell<(u64, u32)> = const { std::cell::Cell::new((0, 0)) };
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Whether one more timed-out request's stack may be formatted on this thread now; Err says
/// why not, for the log entry.
pub(crate) fn stack_budget() -> Result<(), String> {
    let second = START.get_or_init(Instant::now).elapsed().as_secs();
    let (last, count) = STACKS_FORMATTED.with(std::cell::Cell::get);
    let count = if last == second { count } else { 0 };
    if count >= STACKS_PER_SECOND {
        return Err(format!(
            "(not formatted: more than {STACKS_PER_SECOND} timed-out requests' stacks in this second)"
        ));
    }
    STACKS_FORMATTED.with(|c| c.set((second, count + 1)));
    Ok(())
}

/// The stack of the thread `ident` for a timed-out request's log entry, or why it is left out.
pub(crate) fn stack_for_log(py: Python<'_>, ident: u64) -> String {
    match stack_budget() {
        Ok(()) => stack_text(py, ident),
        Err(why) => why,
    }
}

/// The formatted Python stack of the thread `ident`, or why there is none, for a log entry.
pub(crate) fn stack_text(py: Python<'_>, ident: u64) -> String {
    stack_of(py, ident).unwrap_or_else(|e| {
        if e.is_instance_of::<pyo3::exceptions::PyKeyError>(py) {
            // A thread with no frame runs none of the app's code: it is in the server's, most
            // often waiting for its client to take the response.
            "(none: it runs no Python code now, waiting in the server)".to_owned()
        } else {
            format!("(no stack: {e})")
        }
    })
}

/// The formatted Python stack of the thread `ident`.
pub(crate) fn stack_of(py: Python<'_>, ident: u64) -> PyResult<String> {
    let frames = py.import("sys")?.call_method0("_current_frames")?;
    let frame = frames.get_item(ident)?;
    let lines = py
        .import("traceback")?
        .call_method1("format_stack", (frame,))?;
    let text = PyString::new(py, "").call_method1("join", (lines,))?;
    Ok(text.extract::<String>()?.trim_end().to_owned())
}

/// One timed-out request waiting for the watchdog: what it does with the GIL.
type Interrupt = Box<dyn FnOnce(Python<'_>) + Send>;

/// Has the watchdog thread run `job` with the GIL (never waits for the GIL itself): an ASGI
/// task's timeout, which needs the GIL while the event loop's thread may hold it.
pub(crate) fn submit_call(job: Interrupt) {
    submit(job);
}

struct Queue {
    jobs: VecDeque<Interrupt>,
    /// Jobs for later (a look at a timed-out request that caught its `TimeoutError`), with
    /// when each is due; dropped when the thread stops.
    later: Vec<(Instant, Interrupt)>,
    thread: Option<JoinHandle<()>>,
    /// Finish what is queued, then end (the interpreter is about to be finalised).
    stopping: bool,
    /// The thread has ended.
    ended: bool,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    jobs: VecDeque::new(),
    later: Vec::new(),
    thread: None,
    stopping: false,
    ended: false,
});
/// Signalled when jobs arrive, when a stop is asked for, and when the thread ends.
static CHANGED: Condvar = Condvar::new();

fn queue() -> MutexGuard<'static, Queue> {
    QUEUE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Has the watchdog thread run `job` with the GIL once `delay` has passed, unless it stops
/// before (the interpreter is being finalised).
pub(crate) fn submit_after(delay: Duration, job: Interrupt) {
    let mut q = queue();
    if q.thread.is_none() || q.stopping {
        return;
    }
    q.later.push((Instant::now() + delay, job));
    drop(q);
    CHANGED.notify_all();
}

fn submit(job: Interrupt) {
    let mut q = queue();
    q.jobs.push_back(job);
    if q.thread.is_none() {
        q.ended = false;
        match crate::signals::spawn_helper("wsgi-watchdog", None, watch_loop) {
            Ok(handle) => {
                q.thread = Some(handle);
                crate::interpreter::before_finalize(stop_before_finalize);
            }
            Err(e) => {
                q.jobs.pop_back();
                drop(q);
                tracing::error!(target: "wsgi", "cannot start the thread that interrupts timed-out requests: {e}");
                return;
            }
        }
    }
    drop(q);
    CHANGED.notify_all();
}

fn watch_loop() {
    loop {
        let batch: Vec<Interrupt> = {
            let mut q = queue();
            loop {
                let now = Instant::now();
                let mut i = 0;
                while i < q.later.len() {
                    if q.later[i].0 <= now {
                        let (_, job) = q.later.swap_remove(i);
                        q.jobs.push_back(job);
                    } else {
                        i += 1;
                    }
                }
                if !q.jobs.is_empty() || q.stopping {
                    break;
                }
                q = match q.later.iter().map(|(due, _)| *due).min() {
                    Some(due) => {
                        CHANGED
                            .wait_timeout(q, due.saturating_duration_since(now))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => CHANGED.wait(q).unwrap_or_else(|e| e.into_inner()),
                };
            }
            if q.jobs.is_empty() {
                q.later.clear();
                q.ended = true;
                drop(q);
                CHANGED.notify_all();
                return;
            }
            q.jobs.drain(..).collect()
        };
        if crate::interpreter::is_running() {
            // The thread keeps no Python thread state between batches: it has none while it
            // waits, so finalising the interpreter never has to account for it.
            Python::attach(|py| batch.into_iter().for_each(|job| job(py)));
        }
    }
}

fn stop_before_finalize() {
    stop(Duration::from_secs(2));
}

/// Lets the watchdog finish what is queued and end, waiting up to `limit` (before the interpreter
/// is finalised). A thread that is still waiting for the GIL after that is left behind.
pub(crate) fn stop(limit: Duration) {
    let mut q = queue();
    let Some(handle) = q.thread.take() else {
        return;
    };
    q.stopping = true;
    CHANGED.notify_all();
    let deadline = Instant::now() + limit;
    while !q.ended {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        q = CHANGED
            .wait_timeout(q, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    let ended = q.ended;
    q.stopping = false;
    drop(q);
    if ended {
        let _ = handle.join();
    } else {
        tracing::error!(target: "wsgi", "the watchdog thread did not finish within {} ms", limit.as_millis());
    }
}

/// Whether the watchdog thread exists (for tests).
#[cfg(test)]
fn started() -> bool {
    queue().thread.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    #[test]
    fn a_burst_of_interrupts_is_one_thread_and_stops() {
        with_python(|_| ());
        // Threads of this module (other tests' threads come and go meanwhile).
        let ours = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("wsgi-"))
                .count()
        };
        let watches: Vec<_> = (0..20).map(|_| Arc::new(RequestWatch::default())).collect();
        // Held GIL: every interrupt has to wait, so a thread per interrupt would show here.
        with_python(|_| {
            for w in &watches {
                w.interrupt_in_background("a test request".into());
            }
            assert!(started());
            // A thread takes its name once it runs.
            let deadline = Instant::now() + Duration::from_secs(10);
            while ours() == 0 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            assert_eq!(ours(), 1, "one watchdog thread for 20 interrupts");
        });
        stop(Duration::from_secs(10));
        assert!(!started());
        // None of them was running: each is marked so that it never starts.
        with_python(|py| {
            for w in &watches {
                assert!(!w.enter(py));
            }
        });
    }
}
