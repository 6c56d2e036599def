//! State only the event-loop thread uses, in a plain static: a thread-local would cost a
//! `__tls_get_addr` call per use in a shared object, on paths that run per request. The
//! accessors are `unsafe`: the cell cannot check its thread, so each caller states why it is
//! on the event loop.

use std::cell::Cell;

pub(crate) struct LoopCell<T>(Cell<T>);

// SAFETY: the only accessors are unsafe functions whose contract is "event-loop thread only", so
// no two threads can reach the inner Cell.
unsafe impl<T> Sync for LoopCell<T> {}

impl<T> LoopCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        LoopCell(Cell::new(value))
    }

    /// The value in place, for one that is not `Copy` (a list).
    ///
    /// # Safety
    /// Event-loop thread only, and no other reference from this function's result is live.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut(&self) -> &mut T {
        // SAFETY: per the function contract: one thread, one reference at a time.
        unsafe { &mut *self.0.as_ptr() }
    }
}

impl<T: Copy> LoopCell<T> {
    /// # Safety
    /// Event-loop thread only.
    pub(crate) unsafe fn get(&self) -> T {
        self.0.get()
    }

    /// # Safety
    /// Event-loop thread only.
    pub(crate) unsafe fn set(&self, value: T) {
        self.0.set(value)
    }
}
