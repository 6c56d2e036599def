//! One connection's app task as the server sees it: waiting for the event loop (queued), started
//! by it, or given up on (the server answered before the loop got to it: a queue timeout, a
//! deadline); and, past the location's deadline, stopped: cancelled on the loop when it is
//! suspended at an await, or, when it keeps the loop busy without awaiting, interrupted with an
//! asynchronous `TimeoutError` by the watchdog, as a WSGI request is.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyModule;

use super::scope::HttpScope;
use crate::timeout_exit::{self, Deadline, GRACE};

/// What the watchdog saw of a timed-out task at its last look.
#[derive(Clone, Copy, Debug, Default)]
struct Look {
    /// The loop's turns then, when it was woken for the next look: the same at that look
    /// means the loop has not turned in between (one task's step held it throughout).
    turns: Option<u64>,
    /// An exception was set for it: how many of the deadline's exceptions had landed in the
    /// loop's thread before (the same number now: it is still pending).
    pending: Option<u64>,
}

impl Look {
    /// Notes the loop's turns now and wakes it, for the next look.
    fn mark(lp: &impl LoopThread, pending: Option<u64>) -> Self {
        let turns = Some(lp.turns());
        lp.ping();
        Self { turns, pending }
    }
}

/// A task of a timed-out request that the loop's thread runs now, without awaiting.
struct Blocking<'py> {
    current: Bound<'py, PyAny>,
    current_task: Bound<'py, PyAny>,
    loop_object: Bound<'py, PyAny>,
    /// The loop thread's Python id.
    ident: u64,
}

impl Blocking<'_> {
    /// Whether the loop still runs that task. Asking which task runs is asyncio's C function:
    /// it runs no Python code, so the GIL stays with the caller between this look and an
    /// interrupt.
    fn still_running(&self) -> bool {
        self.current_task
            .call1((&self.loop_object,))
            .is_ok_and(|now| now.is(&self.current))
    }
}

/// What a task's watch needs of the event loop that runs it (the loop implements it; the watch
/// sits below the loop and does not know its type).
pub(crate) trait LoopThread {
    /// The asyncio loop object, once made.
    fn loop_object<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>>;
    /// The loop's Python thread id, once it runs.
    fn thread_ident(&self) -> Option<u64>;
    /// Records that an asynchronous exception was aimed at the loop's thread.
    fn note_interrupt(&self);
    /// How many times the loop has taken its work so far.
    fn turns(&self) -> u64;
    /// Wakes the loop with no work: a loop that turns takes the wake-up (and counts a turn).
    fn ping(&self);
    /// Whether `running`, the task the loop's thread runs, runs for the request whose context
    /// value is `request_id` (a task its own task spawned copied its context). Runs Python code.
    fn runs_for(
        &self,
        py: Python<'_>,
        running: &Bound<'_, PyAny>,
        request_id: &Bound<'_, PyAny>,
    ) -> bool;
}

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const GIVEN_UP: u8 = 2;

/// `ends` bits: the deadline passed; the task ended. Set with one atomic operation each, so
/// exactly one side sees both and knows whether a slot was lost in between.
const TIMED_OUT: u8 = 1;
const ENDED: u8 = 2;
/// The server ended the response itself, cleanly, as its worker exits (an event stream).
const ENDED_BY_SERVER: u8 = 4;

/// Set on the loop's thread once the worker, exiting, cancels the app tasks still running
/// after the shutdown timeout: the `CancelledError` they end with is the server's doing.
static CANCELLING_AT_EXIT: AtomicBool = AtomicBool::new(false);

/// The loop cancels what is left of the apps' tasks: the worker exits.
pub(crate) fn cancel_at_exit() {
    CANCELLING_AT_EXIT.store(true, Ordering::Release);
}

/// When `err`, which ended the task of `scope`, is the cancellation at the worker's exit: logs
/// it (a warning with where the task waited, not an app error) and says true.
pub(crate) fn ended_by_exit(py: Python<'_>, scope: &HttpScope, err: &PyErr) -> bool {
    if !CANCELLING_AT_EXIT.load(Ordering::Acquire)
        || !err.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py)
    {
        return false;
    }
    tracing::warn!(
        target: "asgi",
        "the task of \"{}\" was still running when the worker exited, client: {}{}; it is \
         cancelled where it waited:\n{}",
        scope.request_line().escape_debug(),
        scope.client_text(),
        scope.log_suffix(),
        crate::traceback::format(py, err)
    );
    true
}

pyo3::create_exception!(
    ngx_wsgi,
    EventLoopDied,
    pyo3::exceptions::PyRuntimeError,
    "The worker's ASGI event loop died with this task in it; the server answered in its place."
);

/// When `err`, which ended the task of `scope`, is the loop's death (the server abandoned the
/// task): logs it, one line (the death was logged with its traceback), and says true.
pub(crate) fn ended_by_loop_death(py: Python<'_>, scope: &HttpScope, err: &PyErr) -> bool {
    if !err.is_instance_of::<EventLoopDied>(py) {
        return false;
    }
    tracing::warn!(
        target: "asgi",
        "the ASGI event loop died with the task of \"{}\" in it, client: {}{}; the server \
         answered in its place",
        scope.request_line().escape_debug(),
        scope.client_text(),
        scope.log_suffix(),
    );
    true
}

#[derive(Debug, Default)]
pub struct TaskWatch {
    state: AtomicU8,
    /// [`TIMED_OUT`] (the server answered in its place) and [`ENDED`].
    ends: AtomicU8,
    /// The timeout was acted on (a stack logged); only changed with the GIL held.
    handled: AtomicBool,
    /// An asynchronous exception was set in the loop's thread for this task.
    interrupted: AtomicBool,
    /// `TimeoutExit` was set at least once (the task caught what stopped it).
    exited: AtomicBool,
    /// The asyncio task (set on the loop's thread when it is created).
    task: Mutex<Option<Py<PyAny>>>,
    /// What the request's context holds (its id object): the tasks its own task spawns have it.
    request_id: Mutex<Option<Py<PyAny>>>,
}

impl TaskWatch {
    /// The loop runs the app now; false when the server gave up on the request meanwhile (then
    /// the app must not run).
    pub(crate) fn start(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The server answers the request itself, the app never runs; false when the loop started
    /// it already.
    pub(crate) fn give_up(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether it still waits for the loop.
    pub fn queued(&self) -> bool {
        self.state.load(Ordering::Acquire) == QUEUED
    }

    /// Whether the loop started the app.
    pub fn started(&self) -> bool {
        self.state.load(Ordering::Acquire) == STARTED
    }

    /// Whether the server answered the request in the app's place: its deadline passed, or
    /// it waited too long for the loop. The app's end (or the client's) is nobody's news then.
    pub fn answered_by_server(&self) -> bool {
        self.timed_out() || self.ended_by_server() || self.state.load(Ordering::Acquire) == GIVEN_UP
    }

    /// Whether the server ended the response itself, cleanly (see [`mark_ended_by_server`]).
    ///
    /// [`mark_ended_by_server`]: TaskWatch::mark_ended_by_server
    pub fn ended_by_server(&self) -> bool {
        self.ends.load(Ordering::Acquire) & ENDED_BY_SERVER != 0
    }

    /// The server ends the response itself, cleanly (an event stream at worker exit): the app
    /// is told as if its client had gone, and that is nobody's news.
    pub fn mark_ended_by_server(&self) {
        self.ends.fetch_or(ENDED_BY_SERVER, Ordering::AcqRel);
    }

    /// Whether the request's deadline passed while its app ran.
    pub fn timed_out(&self) -> bool {
        self.ends.load(Ordering::Acquire) & TIMED_OUT != 0
    }

    /// The deadline passed; true when the task has not ended (it holds a lost slot until then).
    pub(crate) fn mark_timed_out(&self) -> bool {
        self.ends.fetch_or(TIMED_OUT, Ordering::AcqRel) & ENDED == 0
    }

    fn task(&self) -> std::sync::MutexGuard<'_, Option<Py<PyAny>>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_task(&self, task: Py<PyAny>, request_id: Py<PyAny>) {
        *self.task() = Some(task);
        *self.request_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(request_id);
    }

    /// On the loop's thread, once the deadline passed: logs where the task waits and cancels
    /// it (so `CancelledError` reaches the app's await). A task the watchdog interrupted
    /// already is cancelled too, in case it caught the `TimeoutError` and awaits on.
    pub(crate) fn cancel(&self, py: Python<'_>, driver: &Bound<'_, PyModule>, what: &str) {
        let first = !self.handled.swap(true, Ordering::AcqRel);
        let Some(task) = self.task().as_ref().map(|t| t.clone_ref(py)) else {
            return;
        };
        let task = task.bind(py);
        let done = task
            .call_method0("done")
            .and_then(|d| d.extract::<bool>())
            .unwrap_or(true);
        if done {
            if first {
                tracing::info!(target: "asgi", "{what}; its task has ended since");
            }
            return;
        }
        if first {
            let stack = crate::watchdog::stack_budget()
                .and_then(|()| {
                    driver
                        .call_method1("await_stack", (task,))
                        .and_then(|s| s.extract::<String>())
                        .map_err(|e| format!("(no stack: {})", crate::traceback::format(py, &e)))
                })
                .unwrap_or_else(|why| why);
            tracing::error!(
                target: "asgi",
                "{what}; cancelling its task. Where it waits (most recent call last):\n{stack}"
            );
        }
        if let Err(e) = task.call_method0("cancel") {
            tracing::error!(target: "asgi", "cancelling a timed-out task: {}", crate::traceback::format(py, &e));
        }
    }

    /// The task of this request (its own, or one it spawned: a framework's middleware runs the
    /// endpoint in a task of its own, as Starlette's HTTP middleware and Django do) that keeps
    /// the loop's thread busy now; None when the loop awaits or runs another request's task.
    fn blocking<'py>(&self, py: Python<'py>, lp: &impl LoopThread) -> Option<Blocking<'py>> {
        let task = self.task().as_ref().map(|t| t.clone_ref(py))?;
        let (loop_object, ident) = (lp.loop_object(py)?, lp.thread_ident()?);
        let current_task = py
            .import("asyncio")
            .and_then(|a| a.getattr("current_task"))
            .ok()?;
        let current = current_task.call1((&loop_object,)).ok()?;
        if current.is_none() {
            return None;
        }
        if !current.is(task.bind(py)) {
            let request_id = self
                .request_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|r| r.clone_ref(py));
            if !request_id.is_some_and(|r| lp.runs_for(py, &current, r.bind(py))) {
                return None;
            }
        }
        Some(Blocking {
            current,
            current_task,
            loop_object,
            ident,
        })
    }

    /// On the watchdog's thread (with the GIL, which the loop's thread gave up at a switch
    /// interval or a blocking call), once the deadline passed: when the loop runs a task of
    /// this request ([`Self::blocking`]), that task does not await and a cancellation would
    /// never be seen, so the loop's thread gets `TimeoutError`, which lands in its code.
    /// Otherwise the loop's cancellation does the job. Either way the task is looked at again
    /// [`GRACE`] later, in case it caught what stopped it and keeps the loop busy.
    pub(crate) fn interrupt_if_blocking<L: LoopThread + Sync>(
        self: &Arc<Self>,
        py: Python<'_>,
        lp: &'static L,
        what: String,
    ) {
        let pending = if self.handled.load(Ordering::Acquire) {
            None
        } else {
            self.interrupt_now(py, lp, &what)
        };
        self.look_again(lp, Look::mark(lp, pending), GRACE, what);
    }

    /// Logs the timeout and sets the `TimeoutError` when the task blocks the loop; Some(how
    /// many of the deadline's exceptions had landed in the loop's thread before) when it was set.
    fn interrupt_now(&self, py: Python<'_>, lp: &impl LoopThread, what: &str) -> Option<u64> {
        let blocking = self.blocking(py, lp)?;
        let stack = crate::watchdog::stack_for_log(py, blocking.ident);
        let landed = timeout_exit::landed(py, blocking.ident).count;
        let wait = crate::blocking_wait::find(py, blocking.ident);
        // Finding the task's context, formatting the stack, counting and finding a wait (a
        // synchronous `Future.result()` in async code) ran Python code, during which the GIL
        // may have gone to the loop's thread and the task awaited or ended: checked again, or
        // the TimeoutError would land in whatever the loop runs next (another request's task,
        // the loop's own code).
        if !blocking.still_running() {
            return None;
        }
        self.handled.store(true, Ordering::Release);
        self.interrupted.store(true, Ordering::Release);
        lp.note_interrupt();
        timeout_exit::raise_in(py, blocking.ident, Deadline::TimeoutError);
        crate::blocking_wait::end(wait);
        tracing::error!(
            target: "asgi",
            "{what}; it keeps the event loop busy without awaiting, so it cannot be cancelled: \
             interrupting it with TimeoutError. Its Python stack (most recent call last):\n{stack}"
        );
        Some(landed)
    }

    fn look_again<L: LoopThread + Sync>(
        self: &Arc<Self>,
        lp: &'static L,
        look: Look,
        after: Duration,
        what: String,
    ) {
        let watch = self.clone();
        crate::watchdog::submit_after(after, Box::new(move |py| watch.look(py, lp, look, what)));
    }

    /// A timed-out task that has held the loop since the last look ([`GRACE`] ago: the loop
    /// has not turned since, and runs the task now), [`GRACE`] after what was set for it
    /// landed (none pending), caught what stopped it (its `TimeoutError`, its cancellation, a
    /// `TimeoutExit`): the loop's thread gets `TimeoutExit`, which `except Exception` lets
    /// through. Looked at again while the task lives.
    fn look<L: LoopThread + Sync>(
        self: &Arc<Self>,
        py: Python<'_>,
        lp: &'static L,
        last: Look,
        what: String,
    ) {
        if self.task().is_none() {
            return;
        }
        let held_throughout = last.turns == Some(lp.turns());
        let blocking = if held_throughout {
            self.blocking(py, lp)
        } else {
            None
        };
        let Some(blocking) = blocking else {
            self.look_again(lp, Look::mark(lp, None), GRACE, what);
            return;
        };
        let landed = timeout_exit::landed(py, blocking.ident);
        if last.pending == Some(landed.count) {
            // Still pending in a C call: it lands when the call returns, or now if the call is
            // a wait the watchdog ends (`blocking_wait.rs`) begun since the interrupt.
            let wait = crate::blocking_wait::find(py, blocking.ident);
            if blocking.still_running() {
                crate::blocking_wait::end(wait);
            }
            self.look_again(lp, last, GRACE, what);
            return;
        }
        if last.pending.is_some() && landed.ago < GRACE {
            // It landed since the last look: the app has GRACE from then.
            self.look_again(lp, last, GRACE - landed.ago, what);
            return;
        }
        let first = !self.exited.load(Ordering::Relaxed);
        let stack = first.then(|| crate::watchdog::stack_for_log(py, blocking.ident));
        let wait = crate::blocking_wait::find(py, blocking.ident);
        // As in interrupt_now: checked again, with no Python code between it and the interrupt.
        if !blocking.still_running() {
            self.look_again(lp, Look::mark(lp, None), GRACE, what);
            return;
        }
        self.exited.store(true, Ordering::Relaxed);
        self.interrupted.store(true, Ordering::Release);
        lp.note_interrupt();
        timeout_exit::raise_in(py, blocking.ident, Deadline::Exit);
        crate::blocking_wait::end(wait);
        if let Some(stack) = stack {
            tracing::error!(
                target: "asgi",
                "{what}; it has held the event loop for {} s since it was stopped (the app \
                 caught what stopped it): interrupting it with TimeoutExit, a BaseException \
                 that `except Exception` lets through (again while it runs on). Its Python \
                 stack (most recent call last):\n{stack}",
                GRACE.as_secs(),
            );
        }
        self.look_again(lp, Look::mark(lp, Some(landed.count)), GRACE, what);
    }

    /// The task ended (on the loop's thread, with the GIL): an interrupt that has not fired
    /// yet must not land in the loop's own code or the next task. True when the task was past
    /// its deadline (its lost slot comes back).
    pub(crate) fn task_done(&self, lp: &impl LoopThread) -> bool {
        *self.task() = None;
        let lost = self.ends.fetch_or(ENDED, Ordering::AcqRel) & TIMED_OUT != 0;
        if self.interrupted.swap(false, Ordering::AcqRel) {
            if let Some(ident) = lp.thread_ident() {
                // SAFETY: called on the loop's thread with the GIL; NULL clears this thread's
                // pending asynchronous exception.
                unsafe { ffi::PyThreadState_SetAsyncExc(ident as _, std::ptr::null_mut()) };
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_started_or_given_up_never_both() {
        let w = TaskWatch::default();
        assert!(w.start());
        assert!(!w.give_up(), "the loop started it");
        assert!(w.started());
        let w = TaskWatch::default();
        assert!(w.give_up());
        assert!(!w.start(), "the server answered it: the app never runs");
        assert!(!w.started());
    }

    #[test]
    fn a_slot_is_lost_only_when_the_deadline_comes_first() {
        let w = TaskWatch::default();
        assert!(w.mark_timed_out(), "still running at its deadline");
        assert_eq!(
            w.ends.fetch_or(ENDED, Ordering::AcqRel) & TIMED_OUT,
            TIMED_OUT
        );
        let w = TaskWatch::default();
        w.ends.fetch_or(ENDED, Ordering::AcqRel);
        assert!(
            !w.mark_timed_out(),
            "it ended before its deadline was handled"
        );
        assert!(w.timed_out());
    }
}
