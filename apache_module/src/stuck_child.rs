//! A child whose every MPM thread is stuck past its `NgxWsgiRequestTimeout` (each in a call that
//! does not return, where the deadline's `TimeoutError` cannot land: a C extension waiting for
//! ever) serves nothing again: its requests were answered 504 at their deadlines, but its
//! threads never come back, and with every child so the whole server stops answering. Once that
//! has lasted [`STUCK_FOR`], the child stops taking connections and exits without waiting for
//! those threads; the parent starts a fresh one in its place (as mod_wsgi's daemon mode
//! restarts its process, and gunicorn its worker).

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bindings::{ap_mpm_query, APLOG_ALERT, AP_MPMQ_MAX_THREADS};

/// How long every thread must have been stuck before the child goes.
const STUCK_FOR: Duration = Duration::from_secs(5);
/// How long the stopping child leaves the MPM to close its listeners and kept connections and
/// finish writing what it has (the 504s) before it ends.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Threads of this child whose request's deadline passed while they ran it, not back yet.
static LOST: AtomicUsize = AtomicUsize::new(0);
/// Since when every thread is.
static ALL_LOST_SINCE: Mutex<Option<Instant>> = Mutex::new(None);
static LEAVING: AtomicBool = AtomicBool::new(false);

fn threads_per_child() -> usize {
    let mut n: c_int = 0;
    // SAFETY: a plain query into an int.
    let rc = unsafe { ap_mpm_query(AP_MPMQ_MAX_THREADS as c_int, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(1).max(1)
    } else {
        usize::MAX
    }
}

fn since() -> std::sync::MutexGuard<'static, Option<Instant>> {
    ALL_LOST_SINCE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A thread's request timed out while the thread ran it (the deadline thread).
pub(crate) fn lost() {
    if LOST.fetch_add(1, SeqCst) + 1 < threads_per_child() {
        return;
    }
    let mut since = since();
    if since.is_none() {
        *since = Some(Instant::now());
        drop(since);
        crate::deadline::arm(Instant::now() + STUCK_FOR, Arc::new(Look));
    }
}

/// A thread whose request had timed out is back (its own thread).
pub(crate) fn back() {
    LOST.fetch_sub(1, SeqCst);
    *since() = None;
}

/// The look [`STUCK_FOR`] after every thread was lost.
struct Look;

impl crate::deadline::Expire for Look {
    fn expire(&self) {
        let stuck_for = since().map(|at| at.elapsed());
        match stuck_for {
            Some(d) if d >= STUCK_FOR && LOST.load(SeqCst) >= threads_per_child() => leave(d),
            // Every thread got lost again since one came back: look again when that one is due.
            Some(d) if d < STUCK_FOR => {
                crate::deadline::arm(Instant::now() + (STUCK_FOR - d), Arc::new(Look));
            }
            _ => {}
        }
    }
}

fn leave(stuck_for: Duration) {
    if LEAVING.swap(true, SeqCst) {
        return;
    }
    crate::log::write(
        APLOG_ALERT as c_int,
        &format!(
            "wsgi: every thread of this child ({}) has been stuck past its NgxWsgiRequestTimeout for \
             {} ms (their requests were answered 504): it stops taking connections and exits in {} s \
             without waiting for them, and a fresh child takes its place",
            LOST.load(SeqCst),
            stuck_for.as_millis(),
            EXIT_GRACE.as_secs()
        ),
    );
    crate::recycle::stuck();
    let started = ngx_wsgi::signals::spawn_helper("wsgi-stuck-exit", None, || {
        std::thread::sleep(EXIT_GRACE);
        // SAFETY: ends the process at once, as the log entry said; its threads are stuck in
        // calls that would never let Python finalise.
        unsafe { libc::_exit(0) };
    });
    if started.is_err() {
        // SAFETY: as above, without the grace.
        unsafe { libc::_exit(0) };
    }
}
