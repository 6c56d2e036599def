//! A recycling child's keep-alive connections, drained before it stops. The event MPM closes a
//! stopping child's idle keep-alive connections at once, and a request a client sent on one in
//! that instant is lost (`MaxConnectionsPerChild` does the same); the worker MPM's thread that
//! holds a kept connection closes it after its response once the child is stopping, with the
//! same race (a few requests in a thousand-odd measured under keep-alive load). So the child
//! first serves on for a while, every response saying `Connection: close` (`crate::recycle`): a
//! busy connection's next request is answered and the connection closed after it. The MPM keeps
//! no live count of those connections for a module to wait on (its scoreboard's is a snapshot
//! taken when timeouts are processed), so the drain has a fixed length. The prefork MPM's child
//! serves its one connection to its end before it stops: no drain there.

use std::ffi::{c_int, CStr};
use std::time::Duration;

use crate::bindings::{ap_mpm_query, ap_show_mpm, AP_MPMQ_MPM_STATE, AP_MPMQ_STOPPING};

/// How long the drain lasts: a connection idle for longer meets the race any keep-alive timeout
/// has, which clients retry.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs `stop` once the drain is over: on a thread of its own under the event and worker MPMs,
/// at once under prefork (or when that thread cannot start).
pub(crate) fn then(stop: fn()) {
    // SAFETY: ap_show_mpm returns a static name.
    let mpm = unsafe { CStr::from_ptr(ap_show_mpm()) }.to_bytes();
    if mpm != b"event" && mpm != b"worker" {
        stop();
        return;
    }
    let drain = std::thread::Builder::new()
        .name("wsgi-drain".into())
        .spawn(move || {
            std::thread::sleep(DRAIN);
            // A stop the server began meanwhile (a graceful restart) is not asked for again.
            if !stopping() {
                stop();
            }
        });
    if drain.is_err() {
        stop();
    }
}

/// Whether the MPM is stopping this child already.
fn stopping() -> bool {
    let mut state: c_int = 0;
    // SAFETY: a plain query into an int.
    let rc = unsafe { ap_mpm_query(AP_MPMQ_MPM_STATE as c_int, &mut state) };
    rc == 0 && state == AP_MPMQ_STOPPING as c_int
}
