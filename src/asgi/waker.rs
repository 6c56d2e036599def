//! How the server tells an app that waits (in `send` for room, in `receive` for body or a
//! disconnect) to look again, from any thread, without ever touching Python there: it posts the
//! waker to the event loop, once however often it is fired before the loop gets to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

/// Where a fired waker is posted: the event loop that runs the request.
pub(crate) trait WakeQueue: Sync {
    /// Has the loop call [`Waker::fire`] soon (any thread).
    fn post_wake(&self, waker: Arc<Waker>);
}

/// What else a wake-up does on the loop (notice a client that went away).
type OnFire = Box<dyn Fn(Python<'_>) + Send + Sync>;

/// One connection's waker.
pub struct Waker {
    owner: &'static dyn WakeQueue,
    queued: AtomicBool,
    /// Only touched on the event loop's thread (with the GIL).
    parked: Mutex<Parked>,
}

#[derive(Default)]
struct Parked {
    /// Futures the app's `send`/`receive` await.
    futures: Vec<Py<PyAny>>,
    /// The connection's own check, to notice a client gone while the app awaits something else.
    on_fire: Option<std::sync::Arc<OnFire>>,
}

impl Waker {
    pub(crate) fn new(owner: &'static dyn WakeQueue) -> Arc<Waker> {
        Arc::new(Waker {
            owner,
            queued: AtomicBool::new(false),
            parked: Mutex::new(Parked::default()),
        })
    }

    /// Makes the waiting app look again (any thread, never blocks on Python).
    pub fn wake(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.owner.post_wake(self.clone());
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks `future` until the next wake-up (event loop thread).
    pub(crate) fn park(&self, future: Py<PyAny>) {
        self.parked().futures.push(future);
    }

    /// Wakes the app if it awaits something (event loop thread): a `receive()` parked for a
    /// disconnect while the response completes must look again and hear of it.
    pub(crate) fn wake_parked(self: &Arc<Self>) {
        if !self.parked().futures.is_empty() {
            self.wake();
        }
    }

    /// Has every wake-up also run `on_fire` (None: nothing more).
    pub(crate) fn watch(&self, on_fire: Option<OnFire>) {
        self.parked().on_fire = on_fire.map(std::sync::Arc::new);
    }

    /// Resolves the parked futures (event loop thread, with the GIL).
    pub(crate) fn fire(&self, py: Python<'_>) {
        self.queued.store(false, Ordering::Release);
        let (futures, on_fire) = {
            let mut parked = self.parked();
            (std::mem::take(&mut parked.futures), parked.on_fire.clone())
        };
        for future in futures {
            let future = future.bind(py);
            let pending = future
                .call_method0(pyo3::intern!(py, "done"))
                .and_then(|d| d.extract::<bool>())
                .is_ok_and(|done| !done);
            if pending {
                if let Err(e) = future.call_method1(pyo3::intern!(py, "set_result"), (py.None(),)) {
                    tracing::error!(target: "asgi", "waking a request: {}", crate::traceback::format(py, &e));
                }
            }
        }
        if let Some(on_fire) = on_fire {
            on_fire(py);
        }
    }
}
