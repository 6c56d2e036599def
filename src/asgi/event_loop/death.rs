//! The loop's death: an exception out of its own code (not the process's end) ends it. What it
//! held is answered at once, what is handed to it later is refused, and the server is told, so
//! that a fresh process, with a new loop, takes over.

use std::sync::atomic::Ordering;

use pyo3::prelude::*;
use pyo3::types::PyModule;

use super::{AsgiLoop, Item};
use crate::asgi::task_watch::{EventLoopDied, TaskWatch};

impl AsgiLoop {
    /// The loop died: the connections whose tasks it can no longer run, and those handed to
    /// it that it never started, are answered now (their servers' ends run on this thread).
    pub(super) fn answer_for_the_dead(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        driver: &Bound<'_, PyModule>,
    ) {
        let error = EventLoopDied::new_err(
            "the ASGI event loop died while this task waited in it; the task is abandoned",
        );
        if let Err(e) = driver.call_method1("abandon", (event_loop, error.into_value(py))) {
            tracing::error!(target: "asgi", "answering the dead loop's requests: {}", crate::traceback::format(py, &e));
        }
        let items = std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        for item in items {
            self.refuse_when_dead(item);
        }
    }

    /// What is handed to the dead loop (any thread): a request is answered at once; wake-ups
    /// and calls are dropped (a caller waiting for a call's answer hears that it will not come).
    pub(super) fn refuse_when_dead(&self, item: Item) {
        match item {
            Item::Http(req) => self.never_started(&req.watch, || {
                req.server.finish(crate::asgi::http::HttpEnd::Failed)
            }),
            Item::Ws(req) => self.never_started(&req.watch, || {
                req.server.finish(crate::asgi::http::HttpEnd::Failed)
            }),
            Item::Wake(_) | Item::Call(_) | Item::Stop => {}
        }
    }

    /// A request handed over that the loop will never start: answered as one whose task could
    /// not be made (a 500), unless the server answered it already.
    fn never_started(&self, watch: &TaskWatch, finish: impl FnOnce()) {
        self.tasks.fetch_sub(1, Ordering::AcqRel);
        if self.start(watch) {
            crate::metrics::loop_task_done(false);
            finish();
        }
    }

    /// Whether the loop died (an error of its own, not the process's end): what is handed to
    /// it now never runs, and the server should refuse it.
    pub fn died(&self) -> bool {
        self.died.load(Ordering::Acquire)
    }

    /// Has `f` run once the loop died and answered what it held (on the loop's thread, which
    /// has let the GIL go).
    pub fn on_death(&self, f: fn()) {
        let _ = self.on_death.set(f);
    }
}
