//! One connection's app task as the server sees it: waiting for the event loop (queued), started
//! by it, or given up on (the server answered before the loop got to it: a queue timeout, a
//! deadline); and, past the location's deadline, stopped: cancelled on the loop when it is
//! suspended at an await, or, when it keeps the loop busy without awaiting, interrupted with an
//! asynchronous `TimeoutError` by the watchdog, as a WSGI request is.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyModule;

use super::scope::HttpScope;

/// What a task's watch needs of the event loop that runs it (the loop implements it; the watch
/// sits below the loop and does not know its type).
pub(crate) trait LoopThread {
    /// The asyncio loop object, once made.
    fn loop_object<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>>;
    /// The loop's Python thread id, once it runs.
    fn thread_ident(&self) -> Option<u64>;
    /// Records that an asynchronous exception was aimed at the loop's thread.
    fn note_interrupt(&self);
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

    /// On the watchdog's thread (with the GIL, which the loop's thread gave up at a switch
    /// interval or a blocking call): when the loop is running this very task, or one it spawned
    /// (a framework's middleware runs the endpoint in a task of its own: Starlette's HTTP
    /// middleware, Django), it does not await and a cancellation would never be seen, so its
    /// thread gets `TimeoutError`, which lands in that task's code. Otherwise the loop's
    /// cancellation does the job.
    pub(crate) fn interrupt_if_blocking(&self, py: Python<'_>, lp: &impl LoopThread, what: &str) {
        if self.handled.load(Ordering::Acquire) {
            return;
        }
        let Some(task) = self.task().as_ref().map(|t| t.clone_ref(py)) else {
            return;
        };
        let (Some(loop_object), Some(ident)) = (lp.loop_object(py), lp.thread_ident()) else {
            return;
        };
        let Ok(current_task) = py.import("asyncio").and_then(|a| a.getattr("current_task")) else {
            return;
        };
        let Ok(current) = current_task.call1((&loop_object,)) else {
            return;
        };
        if current.is_none() {
            return;
        }
        if !current.is(task.bind(py)) {
            let request_id = self
                .request_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|r| r.clone_ref(py));
            if !request_id.is_some_and(|r| lp.runs_for(py, &current, r.bind(py))) {
                return;
            }
        }
        // Asking which task runs is asyncio's C function: it runs no Python code, so the GIL
        // stays here between the last look and the interrupt.
        let still_running = || {
            current_task
                .call1((&loop_object,))
                .is_ok_and(|now| now.is(&current))
        };
        let stack = crate::watchdog::stack_for_log(py, ident);
        // Finding the task's context and formatting the stack ran Python code, during which the
        // GIL may have gone to the loop's thread and the task awaited or ended: checked again,
        // or the TimeoutError would land in whatever the loop runs next (another request's
        // task, the loop's own code).
        if !still_running() {
            return;
        }
        self.handled.store(true, Ordering::Release);
        self.interrupted.store(true, Ordering::Release);
        lp.note_interrupt();
        // SAFETY: the GIL is held; the loop's thread is alive (it runs this task, checked under
        // the GIL just now); TimeoutError is a static exception type.
        unsafe { ffi::PyThreadState_SetAsyncExc(ident as _, ffi::PyExc_TimeoutError) };
        tracing::error!(
            target: "asgi",
            "{what}; it keeps the event loop busy without awaiting, so it cannot be cancelled: \
             interrupting it with TimeoutError. Its Python stack (most recent call last):\n{stack}"
        );
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
