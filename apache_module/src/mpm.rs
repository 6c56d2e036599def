//! What the running MPM says of itself (`ap_mpm_query`): its limits, state and generation.

use std::ffi::c_int;

use crate::bindings::ap_mpm_query;

/// The MPM's answer to `what` (an `AP_MPMQ_*`), or None when it has none.
pub(crate) fn query(what: u32) -> Option<c_int> {
    let mut value: c_int = 0;
    // SAFETY: a plain query into an int.
    (unsafe { ap_mpm_query(what as c_int, &mut value) } == 0).then_some(value)
}
