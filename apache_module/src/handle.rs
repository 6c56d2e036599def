//! This module's descriptor, as Apache fills it in (its index, for configuration look-ups and
//! per-module log levels). `register_hooks`, which Apache calls as it loads the module, before
//! any directive or other hook, records where it is.

use std::ffi::c_int;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::bindings::module;

static MODULE: AtomicPtr<module> = AtomicPtr::new(std::ptr::null_mut());

/// Records the module's descriptor (from `register_hooks`).
pub(crate) fn set(descriptor: *const module) {
    MODULE.store(descriptor.cast_mut(), Ordering::Release);
}

/// This module's descriptor, for configuration look-ups.
pub(crate) fn module() -> *const module {
    MODULE.load(Ordering::Acquire)
}

/// The index Apache gave this module (for per-module log levels); -1 before it was loaded.
pub(crate) fn module_index() -> c_int {
    let m = module();
    if m.is_null() {
        return -1;
    }
    // SAFETY: the descriptor is the module's static; Apache writes the index when it loads the
    // module, before any hook runs, and never afterwards.
    unsafe { (*m).module_index }
}
