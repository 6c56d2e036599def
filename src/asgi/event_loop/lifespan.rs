//! The apps' lifespan on the loop: their startup when the process starts, and at its end the
//! wait for the tasks in flight, their shutdown and the loop thread's bounded end; and the
//! configuration check's run of a startup on a loop of its own.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyTuple};

use super::{driver, AsgiLoop, Item, LoopKind, LIFESPANS};
use crate::asgi::task_watch::LoopThread;
use crate::interpreter;

impl AsgiLoop {
    /// Runs the lifespan startup of each app (index, how to name it in the log) and waits for
    /// every answer, `timeout` at most. An app that does not speak lifespan is noted (info) and
    /// served anyway; a failed startup is an error with the app's text.
    pub fn startup(&self, apps: &[(usize, String)], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = mpsc::channel::<(usize, String, String, String)>();
        for (index, app_name) in apps {
            let index = *index;
            let app_name = app_name.clone();
            let tx = Mutex::new(tx.clone());
            self.post(Item::Call(Box::new(move |py, event_loop, driver| {
                let begun = (|| -> PyResult<()> {
                    let app = crate::app::Apps::get(index).ok_or_else(|| {
                        pyo3::exceptions::PyRuntimeError::new_err("the app is not loaded")
                    })?;
                    let state = PyDict::new(py);
                    let report = PyCFunction::new_closure(py, None, None, move |args: &Bound<'_, PyTuple>, _kw| -> PyResult<()> {
                        let (phase, outcome, text): (String, String, String) = args.extract()?;
                        if phase == "running" {
                            // Any time after the startup, when nobody waits for an answer any more.
                            tracing::error!(target: "asgi", "{app_name}: the lifespan coroutine raised after its startup completed (its shutdown will not run): {text}");
                            return Ok(());
                        }
                        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send((index, phase, outcome, text));
                        Ok(())
                    })?;
                    let lifespan = driver
                        .getattr("Lifespan")?
                        .call1((event_loop, app.bind(py), &state, report))?;
                    lifespan.call_method0("begin")?;
                    let mut guard = LIFESPANS.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(l) = guard.as_mut() {
                        l.objects.insert(index, lifespan.unbind());
                        l.states.insert(index, state.unbind());
                    }
                    Ok(())
                })();
                if let Err(e) = begun {
                    tracing::error!(target: "asgi", "cannot start the lifespan: {}", crate::traceback::format(py, &e));
                }
            })));
        }
        drop(tx);
        let mut waiting: Vec<usize> = apps.iter().map(|(i, _)| *i).collect();
        let name = |i: usize| {
            apps.iter()
                .find(|(j, _)| *j == i)
                .map_or("?", |(_, n)| n.as_str())
                .to_owned()
        };
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            // In slices: a loop that dies meanwhile says so, instead of a timeout later.
            let (index, phase, outcome, text) = match rx.recv_timeout(left.min(DEATH_CHECK)) {
                Ok(r) => r,
                Err(_) if self.died() => {
                    return Err(format!(
                        "{}: the ASGI event loop died during the lifespan startup (its error \
                         is logged above)",
                        name(waiting[0])
                    ))
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => continue,
                Err(_) => {
                    return Err(format!(
                        "{}: lifespan startup did not complete within {} ms",
                        name(waiting[0]),
                        timeout.as_millis()
                    ))
                }
            };
            match (phase.as_str(), outcome.as_str()) {
                ("startup", "ok") => {}
                ("startup", outcome @ ("unsupported" | "abandoned")) => {
                    if outcome == "unsupported" {
                        let last = text.lines().last().unwrap_or("").to_owned();
                        tracing::info!(target: "asgi", "{}: the app does not support the lifespan protocol (it raised before asking for lifespan.startup: {last}); serving it without", name(index));
                    } else {
                        // The lifespan spec: the server must carry on, without lifespan events;
                        // an app stops it with lifespan.startup.failed.
                        tracing::error!(target: "asgi", "{}: the lifespan startup ended without lifespan.startup.complete or .failed; serving the app without lifespan events (the ASGI lifespan spec; send lifespan.startup.failed to refuse to be served): {text}", name(index));
                    }
                    if let Some(l) = LIFESPANS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                        l.objects.remove(&index);
                    }
                }
                ("startup", _) => {
                    // It gets no shutdown (the ASGI lifespan spec) if the process serves on.
                    if let Some(l) = LIFESPANS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                        l.objects.remove(&index);
                    }
                    return Err(format!("{}: lifespan startup failed: {text}", name(index)));
                }
                (phase, _) => {
                    tracing::error!(target: "asgi", "{}: lifespan {phase}: {text}", name(index));
                    continue;
                }
            }
            waiting.retain(|&i| i != index);
        }
        self.started_up.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether every app's lifespan startup completed: until then, and for good when one
    /// failed, the loop takes no request.
    pub fn started_up(&self) -> bool {
        self.started_up.load(Ordering::Acquire)
    }

    /// The worker exits past its bound: cancels the connections' tasks still running (each is
    /// logged with where it waited), not the lifespans' or those the apps made; their requests
    /// end as their tasks do (any thread).
    pub fn cancel_connections(&self) {
        self.post(Item::Call(Box::new(|py, event_loop, driver| {
            crate::asgi::task_watch::cancel_at_exit();
            if let Err(e) = driver.call_method1("cancel_connections", (event_loop,)) {
                tracing::error!(target: "asgi", "cancelling the tasks left: {}", crate::traceback::format(py, &e));
            }
        })));
    }

    /// At the process's end: waits for the HTTP tasks (their responses are done: requests in
    /// flight ended before this) `tasks_wait` at most, cancels those still running, runs each
    /// app's lifespan shutdown (`timeout` at most: a task that outlived its wait must not cost
    /// the apps their shutdown), then stops the loop and joins its thread: the loop takes the
    /// stop within `timeout` (a second at most, 50 ms at least), and its end, which cancels
    /// what is left, within as much again. Err when the thread has not ended by then: a
    /// coroutine keeps it in a call that never returns to the loop, and the process cannot
    /// wait for it. A fast stop that comes meanwhile cuts each wait to a tenth of a second.
    pub fn stop(&self, tasks_wait: Duration, timeout: Duration) -> Result<(), LoopStuck> {
        if self.ended() {
            // The loop died earlier (logged then): nothing is left to wait for or to ask.
            if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = thread.join();
            }
            return Ok(());
        }
        // Each wait is cut short by a fast stop that comes meanwhile (QUIT, then TERM: nginx's
        // master kills a worker still there soon after), as the app's threads' join is. A fast
        // stop from the start gave the waits its own share.
        let fast = interpreter::hurried();
        let (mut tasks_deadline, mut tasks_cut) = (Instant::now() + tasks_wait, false);
        while self.running() > 0 && Instant::now() < tasks_deadline && !self.ended() {
            if !tasks_cut {
                (tasks_deadline, tasks_cut) = interpreter::hurried_deadline(tasks_deadline);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.running() > 0 {
            if !tasks_wait.is_zero() {
                let bound = wait_named(tasks_cut, fast, tasks_wait);
                tracing::warn!(target: "asgi", "{} app task(s) still running after {bound} are cancelled", self.running());
            }
            // Before the lifespan shutdown, which may close what they use (uvicorn's order).
            self.cancel_connections();
        }
        let (mut deadline, mut cut) = (Instant::now() + timeout, false);
        type Answers = (usize, mpsc::Receiver<(String, String, String)>);
        let begun = self.call_later(|py, _l, _d, tx: mpsc::Sender<Answers>| {
            let (rtx, rrx) = mpsc::channel();
            let objects: Vec<Py<PyAny>> = LIFESPANS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|l| l.objects.values().map(|o| o.clone_ref(py)).collect())
                .unwrap_or_default();
            let expected = objects.len();
            for lifespan in objects {
                let rtx = Mutex::new(rtx.clone());
                let report = PyCFunction::new_closure(py, None, None, move |args: &Bound<'_, PyTuple>, _kw| -> PyResult<()> {
                    let r: (String, String, String) = args.extract()?;
                    let _ = rtx.lock().unwrap_or_else(|e| e.into_inner()).send(r);
                    Ok(())
                });
                let result = report.and_then(|report| {
                    let lifespan = lifespan.bind(py);
                    lifespan.setattr("report", report)?;
                    lifespan.call_method0("shutdown").map(drop)
                });
                if let Err(e) = result {
                    tracing::error!(target: "asgi", "lifespan shutdown: {}", crate::traceback::format(py, &e));
                }
            }
            let _ = tx.send((expected, rrx));
        });
        // A loop kept by a coroutine takes the call late or never: that wait is bounded too.
        let taken = recv_until(&begun, &mut deadline, &mut cut);
        if matches!(taken, Err(mpsc::RecvTimeoutError::Timeout)) {
            let apps = LIFESPANS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(0, |l| l.objects.len());
            if apps > 0 {
                let bound = wait_named(cut, fast, timeout);
                tracing::error!(target: "asgi", "lifespan shutdown not run ({apps} app(s)): the event loop did not take it within {bound}, a task keeping the loop's thread");
            }
        }
        if let Ok((mut expected, answers)) = taken {
            while expected > 0 {
                match recv_until(&answers, &mut deadline, &mut cut) {
                    Ok((phase, outcome, _)) if phase == "shutdown" && outcome == "ok" => {
                        expected -= 1
                    }
                    Ok((phase, _, text)) => {
                        tracing::error!(target: "asgi", "lifespan {phase} failed: {text}");
                        if phase == "shutdown" {
                            expected -= 1;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let bound = wait_named(cut, fast, timeout);
                        tracing::error!(target: "asgi", "lifespan shutdown did not complete within {bound}");
                        break;
                    }
                }
            }
        }
        // At least a moment, even with a shutdown timeout of 0: a healthy loop needs one round.
        let teardown = match interpreter::hurried() {
            true => interpreter::HURRIED_WAIT,
            false => timeout.min(Duration::from_secs(1)),
        }
        .max(Duration::from_millis(50));
        self.teardown_ms
            .store(teardown.as_millis() as u64, Ordering::Release);
        self.post(Item::Stop);
        let posted = Instant::now();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(thread) = thread else {
            return Ok(());
        };
        // The loop takes the stop at its next round, unless a coroutine keeps it; its end then
        // cancels what is left (within `teardown`) and closes. All of it counts from the post,
        // so that a fast stop's share stays within what nginx's master gives the worker; one
        // that comes meanwhile cuts what is left to its own share.
        let (mut taken_by, mut ended_by) =
            (posted + teardown, posted + 2 * teardown + TEARDOWN_CLOSE);
        let mut hurry_seen = false;
        let mut look = || {
            if !hurry_seen && interpreter::hurried() {
                hurry_seen = true;
                let now = Instant::now();
                taken_by = taken_by.min(now + interpreter::HURRIED_WAIT);
                ended_by = ended_by.min(now + 2 * interpreter::HURRIED_WAIT + TEARDOWN_CLOSE);
            }
            (taken_by, ended_by)
        };
        while !self.stopping.load(Ordering::Acquire)
            && !thread.is_finished()
            && Instant::now() < look().0
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.stopping.load(Ordering::Acquire) {
            while !thread.is_finished() && Instant::now() < look().1 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if !thread.is_finished() {
            // Left behind: the process ends without finalising Python under it.
            return Err(LoopStuck {
                ident: self.thread_ident(),
                waited: posted.elapsed(),
                took_the_stop: self.stopping.load(Ordering::Acquire),
                hurried: interpreter::hurried(),
            });
        }
        let _ = thread.join();
        Ok(())
    }
}

/// How often a wait for the lifespan startup looks whether the loop died.
const DEATH_CHECK: Duration = Duration::from_millis(50);

/// How a wait of the exit names its bound in the log: the shutdown timeout's `timeout`, a fast
/// stop's share when one `cut` it, or when the exit was a `fast` stop from its start.
fn wait_named(cut: bool, fast: bool, timeout: Duration) -> String {
    match (cut, fast) {
        (true, _) => interpreter::hurried_wait_named(),
        (false, true) => format!("a fast stop's share ({} ms)", timeout.as_millis()),
        (false, false) => format!("the shutdown timeout ({} ms)", timeout.as_millis()),
    }
}

/// Waits for `rx` until `deadline`, which a fast stop that comes meanwhile cuts to its own
/// share (`cut` then says so).
fn recv_until<T>(
    rx: &mpsc::Receiver<T>,
    deadline: &mut Instant,
    cut: &mut bool,
) -> Result<T, mpsc::RecvTimeoutError> {
    loop {
        if !*cut {
            (*deadline, *cut) = interpreter::hurried_deadline(*deadline);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(interpreter::HURRY_LOOK)) {
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < *deadline => {}
            other => return other,
        }
    }
}

/// What closing the loop may take after its tasks were cancelled.
const TEARDOWN_CLOSE: Duration = Duration::from_millis(50);

/// The loop's thread did not end when the process's end asked it to.
#[derive(Debug)]
pub struct LoopStuck {
    ident: Option<u64>,
    waited: Duration,
    /// The loop took the stop: its end (the tasks left, cancelled, finishing) took longer.
    took_the_stop: bool,
    /// A fast stop (from the start, or one that came during the exit) bounded the wait by its
    /// own share.
    hurried: bool,
}

impl LoopStuck {
    /// Logs it (no GIL needed: the stuck thread may hold it).
    pub fn log(&self) {
        let bound = match self.hurried {
            true => " of a fast stop",
            false => "",
        };
        let why = match self.took_the_stop {
            true => "its tasks, cancelled, were still ending",
            false => {
                "a call in a coroutine that never returns to the loop, or a call in C code on \
                 another thread that keeps the GIL"
            }
        };
        tracing::error!(
            target: "asgi",
            "the ASGI event loop's thread did not stop within {} ms{bound} ({why}); the worker \
             exits without finalizing Python",
            self.waited.as_millis()
        );
    }

    /// Logs the Python stack of the loop's thread: where the app keeps it.
    pub fn log_stack(&self, py: Python<'_>) {
        let stack = self
            .ident
            .and_then(|ident| crate::watchdog::stack_of(py, ident).ok())
            .unwrap_or_else(|| "(not known)".to_owned());
        tracing::error!(
            target: "asgi",
            "where the ASGI event loop is stuck, most recent call last:\n{stack}"
        );
    }
}

/// The configuration check: runs `app`'s lifespan startup and shutdown on a loop of `kind`, in
/// the calling (check) process, writing `shutting_down` to `progress` as the shutdown begins.
/// None when both went well or the app has no lifespan.
pub fn check_lifespan(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    kind: LoopKind,
    shutdown_within: Duration,
    progress: std::os::fd::RawFd,
    shutting_down: &[u8],
) -> Option<String> {
    let factory = match kind.factory(py) {
        Ok(f) => f,
        Err(e) => {
            return Some(format!(
                "asgi_event_loop {}: {}",
                kind.name(),
                crate::traceback::format(py, &e)
            ))
        }
    };
    let result = (|| -> PyResult<Option<String>> {
        driver(py)?
            .call_method1(
                "check_lifespan",
                (
                    app,
                    factory,
                    shutdown_within.as_secs_f64(),
                    progress,
                    PyBytes::new(py, shutting_down),
                ),
            )?
            .extract()
    })();
    match result {
        Ok(r) => r,
        Err(e) => Some(crate::traceback::format(py, &e)),
    }
}
