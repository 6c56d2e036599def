//! State only the event-loop thread uses, in a plain static: a thread-local would cost a
//! `__tls_get_addr` call per use in a shared object, on paths that run per request.

use std::cell::Cell;

pub(crate) struct LoopCell<T>(Cell<T>);

// SAFETY: every user of a `LoopCell` is event-loop code; no other thread touches it.
unsafe impl<T> Sync for LoopCell<T> {}

impl<T: Copy> LoopCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        LoopCell(Cell::new(value))
    }

    pub(crate) fn get(&self) -> T {
        self.0.get()
    }

    pub(crate) fn set(&self, value: T) {
        self.0.set(value)
    }
}
