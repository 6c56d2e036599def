//! A recycling child's keep-alive connections, drained before it stops. The event MPM closes a
//! stopping child's idle keep-alive connections at once, and a request a client sent on one in
//! that instant is lost (`MaxConnectionsPerChild` does the same); the worker MPM's thread that
//! holds a kept connection closes it after its response once the child is stopping, with the
//! same race (a few requests in a thousand-odd measured under keep-alive load). So the child
//! first serves on, every response (of every handler) saying `Connection: close`
//! (`crate::recycle`): a busy connection's next request is answered and the connection closed
//! after it. The MPM keeps no live count of those connections (its scoreboard's is a snapshot
//! taken when timeouts are processed), so the child counts its own: those open when the drain
//! begins. It stops once they have all closed, or after [`DRAIN`]; meanwhile it still accepts
//! (only the MPM's stop closes the listeners), and each connection it takes then is served one
//! request and closed. The prefork MPM's child, once told to stop, ends its connection after
//! the response under way, which may have promised keep-alive: it is told when that connection
//! ends instead (its next request says `Connection: close`).

use std::ffi::{c_int, c_void, CStr};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::bindings::{
    ap_show_mpm, apr_pool_cleanup_null, apr_pool_cleanup_register, apr_status_t, conn_rec,
    request_rec, APLOG_INFO, APR_SUCCESS, AP_MPMQ_MPM_STATE, AP_MPMQ_STOPPING, OK,
};

/// The longest the drain lasts: a connection idle for longer meets the race any keep-alive
/// timeout has, which clients retry.
const DRAIN: Duration = Duration::from_secs(2);

/// The connections the drain waits for.
struct Count {
    /// The drain began: connections opened since are not waited for.
    draining: bool,
    /// Client connections opened before the drain began and still open.
    open_before: usize,
}

static COUNT: Mutex<Count> = Mutex::new(Count {
    draining: false,
    open_before: 0,
});
/// Told when the last of those closes.
static ALL_CLOSED: Condvar = Condvar::new();

/// Counts a client connection the drain will wait for (`pre_connection`, every connection of
/// every child: any may recycle, for its limits or to load its apps again). An HTTP/2 stream's connection (`master` set) is its client's, counted
/// once; mod_proxy's connections to its backends (`outgoing`, and no scoreboard slot), kept in
/// its pool for reuse, are not a client's.
///
/// # Safety
/// `c` is a live connection, on its own thread.
pub(crate) unsafe extern "C" fn pre_connection(c: *mut conn_rec, _csd: *mut c_void) -> c_int {
    crate::ffi_guard::guard("counting a connection", OK as c_int, || {
        // SAFETY: per the function contract; the cleanup runs once, when the MPM is done with
        // the connection and clears its pool.
        unsafe {
            if !(*c).master.is_null() || (*c).outgoing != 0 || (*c).sbh.is_null() {
                return OK as c_int;
            }
            {
                let mut count = COUNT.lock().unwrap_or_else(|e| e.into_inner());
                if count.draining {
                    return OK as c_int;
                }
                count.open_before += 1;
            }
            apr_pool_cleanup_register(
                (*c).pool,
                std::ptr::null(),
                Some(connection_closed),
                Some(apr_pool_cleanup_null),
            );
        }
        OK as c_int
    })
}

unsafe extern "C" fn connection_closed(_data: *mut c_void) -> apr_status_t {
    crate::ffi_guard::guard("counting a connection", APR_SUCCESS as apr_status_t, || {
        let mut count = COUNT.lock().unwrap_or_else(|e| e.into_inner());
        count.open_before = count.open_before.saturating_sub(1);
        if count.open_before == 0 {
            ALL_CLOSED.notify_all();
        }
        APR_SUCCESS as apr_status_t
    })
}

/// Waits until every connection open when the drain began has closed, or [`DRAIN`] is over,
/// and says which.
fn wait_for_open_connections() {
    let count = COUNT.lock().unwrap_or_else(|e| e.into_inner());
    let (count, _) = ALL_CLOSED
        .wait_timeout_while(count, DRAIN, |count| count.open_before > 0)
        .unwrap_or_else(|e| e.into_inner());
    let left = count.open_before;
    drop(count);
    let how = match left {
        0 => "the connections it had have closed".to_owned(),
        n => format!(
            "{n} of its connections still open after {} s",
            DRAIN.as_secs()
        ),
    };
    crate::log::write(
        APLOG_INFO as c_int,
        &format!("wsgi: this child's drain is over ({how}); it stops"),
    );
}

/// Runs `stop` once the drain is over: on a thread of its own under the event and worker MPMs,
/// when `r`'s connection ends under prefork (at once when neither can be arranged, or without
/// a request: `r` null).
///
/// # Safety
/// `r` is null or the live request, on its own thread.
pub(crate) unsafe fn then(stop: fn(), r: *mut request_rec) {
    // SAFETY: ap_show_mpm returns a static name.
    let mpm = unsafe { CStr::from_ptr(ap_show_mpm()) }.to_bytes();
    if mpm != b"event" && mpm != b"worker" {
        // SAFETY: per the function contract.
        if r.is_null() || !unsafe { at_connection_end(stop, r) } {
            stop();
        }
        return;
    }
    // A connection counted before this is waited for, one that comes after is not.
    COUNT.lock().unwrap_or_else(|e| e.into_inner()).draining = true;
    let drain = std::thread::Builder::new()
        .name("wsgi-drain".into())
        .spawn(move || {
            wait_for_open_connections();
            // A stop the server began meanwhile (a graceful restart) is not asked for again.
            if !stopping() {
                stop();
            }
        });
    if drain.is_err() {
        stop();
    }
}

/// What runs when the connection ends (prefork: one connection at a time, one stop per child).
static AT_CONNECTION_END: OnceLock<fn()> = OnceLock::new();

/// Has `stop` run when `r`'s connection is done (its pool's cleanup); false if it cannot.
///
/// # Safety
/// `r` is the live request, on its own thread.
unsafe fn at_connection_end(stop: fn(), r: *mut request_rec) -> bool {
    if AT_CONNECTION_END.set(stop).is_err() {
        return false;
    }
    // SAFETY: per the function contract, the connection and its pool are live; the cleanup
    // runs once, on this thread, when the MPM is done with the connection.
    unsafe {
        apr_pool_cleanup_register(
            (*(*r).connection).pool,
            std::ptr::null(),
            Some(connection_ended),
            Some(apr_pool_cleanup_null),
        )
    };
    true
}

unsafe extern "C" fn connection_ended(_data: *mut c_void) -> apr_status_t {
    crate::ffi_guard::guard(
        "stopping a recycled child",
        APR_SUCCESS as apr_status_t,
        || {
            if let Some(stop) = AT_CONNECTION_END.get() {
                stop();
            }
            APR_SUCCESS as apr_status_t
        },
    )
}

/// Whether the MPM is stopping this child already.
fn stopping() -> bool {
    crate::mpm::query(AP_MPMQ_MPM_STATE) == Some(AP_MPMQ_STOPPING as c_int)
}
