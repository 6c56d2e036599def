//! Request timeouts on the Python side: another thread finds the Python thread that runs a
//! request, logs its stack, and interrupts it with an asynchronous `TimeoutError`, so that its
//! server thread comes back once Python regains control.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

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
    thread: AtomicU64,
}

/// Interrupts under way (each on a short-lived thread of its own).
static INTERRUPTING: AtomicUsize = AtomicUsize::new(0);

impl RequestWatch {
    /// The request's thread is about to run the app; false when its deadline already passed
    /// while it waited for a thread (then it must not run at all).
    pub(crate) fn enter(&self, _py: Python<'_>) -> bool {
        if self.expired.load(Ordering::Acquire) {
            return false;
        }
        // SAFETY: plain query of the calling thread's identity.
        let ident = unsafe { ffi::PyThread_get_thread_ident() };
        self.thread.store(ident as u64, Ordering::Relaxed);
        self.started.store(true, Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
        true
    }

    pub(crate) fn leave(&self, _py: Python<'_>) {
        self.running.store(false, Ordering::Release);
        // Both flags change with the GIL held, which this thread holds now.
        if !self.interrupted.load(Ordering::Acquire) {
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

    /// On a new thread (never the server's event loop: it waits for the GIL): logs `what` with
    /// the Python stack of the request's thread and raises `TimeoutError` in it, if the request
    /// is still inside Python.
    pub fn interrupt_in_background(self: &std::sync::Arc<Self>, what: String) {
        let watch = self.clone();
        INTERRUPTING.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name("wsgi-timeout".into())
            .spawn(move || {
                watch.interrupt(&what);
                INTERRUPTING.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            INTERRUPTING.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(target: "wsgi", "cannot start a thread to interrupt a timed-out request: {e}");
        }
    }

    fn interrupt(&self, what: &str) {
        if !crate::interpreter::is_running() {
            return;
        }
        // A short-lived thread: its thread state is released with the GIL (no kept state).
        Python::attach(|py| {
            if !self.running.load(Ordering::Acquire) {
                self.expired.store(true, Ordering::Release);
                let state = if self.started.load(Ordering::Relaxed) {
                    "it left Python before it could be interrupted"
                } else {
                    "it was still waiting for a thread and will not run"
                };
                tracing::error!(target: "wsgi", "{what}; {state}");
                return;
            }
            let ident = self.thread.load(Ordering::Relaxed);
            let stack = stack_of(py, ident).unwrap_or_else(|e| format!("(no stack: {e})"));
            tracing::error!(
                target: "wsgi",
                "{what}; interrupting it with TimeoutError. Its Python stack (most recent call last):\n{stack}"
            );
            self.interrupted.store(true, Ordering::Release);
            // SAFETY: the GIL is held; the thread id belongs to a live thread state (the request
            // is still running, checked under the GIL); TimeoutError is a static exception type.
            unsafe { ffi::PyThreadState_SetAsyncExc(ident as _, ffi::PyExc_TimeoutError) };
        });
    }
}

fn stack_of(py: Python<'_>, ident: u64) -> PyResult<String> {
    let frames = py.import("sys")?.call_method0("_current_frames")?;
    let frame = frames.get_item(ident)?;
    let lines = py
        .import("traceback")?
        .call_method1("format_stack", (frame,))?;
    let text = PyString::new(py, "").call_method1("join", (lines,))?;
    Ok(text.extract::<String>()?.trim_end().to_owned())
}

/// Waits up to `limit` for interrupts under way (before the interpreter is finalised).
pub(crate) fn wait_idle(limit: Duration) {
    let start = Instant::now();
    while INTERRUPTING.load(Ordering::Acquire) > 0 && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
}
