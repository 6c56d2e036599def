//! A child whose every MPM thread is stuck past its `NgxWsgiRequestTimeout` (each in a call that
//! does not return, where the deadline's `TimeoutError` cannot land: a C extension waiting for
//! ever) serves nothing again: its requests were answered 504 at their deadlines, but its
//! threads never come back, and with every child so the whole server stops answering. Once that
//! has lasted [`STUCK_FOR`], the child stops taking connections and exits without waiting for
//! those threads; the parent starts a fresh one in its place (as mod_wsgi's daemon mode
//! restarts its process, and gunicorn its worker).

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bindings::{APLOG_ALERT, AP_MPMQ_MAX_THREADS};

/// How long every thread must have been stuck before the child goes.
const STUCK_FOR: Duration = Duration::from_secs(5);
/// How long the stopping child leaves the MPM to close its listeners and kept connections and
/// finish writing what it has (the 504s) before it ends.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// The MPM threads of this child whose request's deadline passed while they ran it, not back
/// yet (a thread, not a request: an app's subrequest runs on its parent's), and since when
/// every thread is.
static LOST: Mutex<(Vec<std::thread::ThreadId>, Option<Instant>)> = Mutex::new((Vec::new(), None));
static LEAVING: AtomicBool = AtomicBool::new(false);

fn threads_per_child() -> usize {
    crate::mpm::query(AP_MPMQ_MAX_THREADS)
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(1).max(1))
}

fn lost_threads() -> std::sync::MutexGuard<'static, (Vec<std::thread::ThreadId>, Option<Instant>)> {
    LOST.lock().unwrap_or_else(|e| e.into_inner())
}

/// The request `thread` runs timed out while it ran it (called as its deadline is marked, so
/// before the thread can be [`back`]).
pub(crate) fn lost(thread: std::thread::ThreadId) {
    let mut lost = lost_threads();
    if !lost.0.contains(&thread) {
        lost.0.push(thread);
    }
    if lost.0.len() >= threads_per_child() && lost.1.is_none() {
        lost.1 = Some(Instant::now());
        drop(lost);
        crate::deadline::arm(Instant::now() + STUCK_FOR, Arc::new(Look));
    }
}

/// `thread`, whose request had timed out, is back.
pub(crate) fn back(thread: std::thread::ThreadId) {
    let mut lost = lost_threads();
    lost.0.retain(|t| *t != thread);
    lost.1 = None;
}

/// The look [`STUCK_FOR`] after every thread was lost.
struct Look;

impl crate::deadline::Expire for Look {
    fn expire(&self) {
        let (count, stuck_for) = {
            let lost = lost_threads();
            (lost.0.len(), lost.1.map(|at| at.elapsed()))
        };
        match stuck_for {
            Some(d) if d >= STUCK_FOR && count >= threads_per_child() => leave(count, d),
            // Every thread got lost again since one came back: look again when that one is due.
            Some(d) if d < STUCK_FOR => {
                crate::deadline::arm(Instant::now() + (STUCK_FOR - d), Arc::new(Look));
            }
            _ => {}
        }
    }
}

fn leave(count: usize, stuck_for: Duration) {
    if LEAVING.swap(true, SeqCst) {
        return;
    }
    crate::log::write(
        APLOG_ALERT as c_int,
        &format!(
            "wsgi: every thread of this child ({}) has been stuck past its NgxWsgiRequestTimeout for \
             {} ms (their requests were answered 504): it stops taking connections and exits in {} s \
             without waiting for them, and a fresh child takes its place",
            count,
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
