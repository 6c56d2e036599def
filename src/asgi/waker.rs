//! How the server tells an app that waits (in `send` for room, in `receive` for body or a
//! disconnect) to look again, from any thread, without ever touching Python there: it posts the
//! waker to the event loop, once however often it is fired before the loop gets to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

use super::event_loop::AsgiLoop;
use super::http::HttpExchange;

/// One connection's waker.
pub struct Waker {
    owner: &'static AsgiLoop,
    queued: AtomicBool,
    /// Only touched on the event loop's thread (with the GIL).
    parked: Mutex<Parked>,
}

#[derive(Default)]
struct Parked {
    /// Futures the app's `send`/`receive` await.
    futures: Vec<Py<PyAny>>,
    /// The connection, to notice a client gone while the app awaits something else.
    exchange: Option<Py<HttpExchange>>,
}

impl Waker {
    pub(crate) fn new(owner: &'static AsgiLoop) -> Arc<Waker> {
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

    pub(crate) fn watch(&self, exchange: Option<Py<HttpExchange>>) {
        self.parked().exchange = exchange;
    }

    /// Resolves the parked futures (event loop thread, with the GIL).
    pub(crate) fn fire(&self, py: Python<'_>) {
        self.queued.store(false, Ordering::Release);
        let (futures, exchange) = {
            let mut parked = self.parked();
            let exchange = parked.exchange.as_ref().map(|e| e.clone_ref(py));
            (std::mem::take(&mut parked.futures), exchange)
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
        if let Some(exchange) = exchange {
            if let Ok(mut ex) = exchange.bind(py).try_borrow_mut() {
                ex.notice_client_gone();
            }
        }
    }
}
