//! The child's deadline thread: fires the `NgxWsgiRequestTimeout`s of the requests that run on
//! the MPM's threads. One thread per child, started with the first timed request and stopped
//! when the child exits. It never takes the GIL (the core's watchdog does the Python part), so a
//! thread that holds the GIL cannot hold back a 504.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

/// What happens at a deadline.
pub(crate) trait Expire: Send + Sync {
    fn expire(&self);
}

/// An armed deadline, to disarm it.
pub(crate) struct Ticket((Instant, u64));

struct Timers {
    /// By deadline; the number keeps deadlines of the same instant apart.
    armed: BTreeMap<(Instant, u64), Arc<dyn Expire>>,
    next: u64,
    thread: Option<JoinHandle<()>>,
    stopping: bool,
}

static TIMERS: Mutex<Timers> = Mutex::new(Timers {
    armed: BTreeMap::new(),
    next: 0,
    thread: None,
    stopping: false,
});
/// Signalled when an earlier deadline is armed, and to stop.
static CHANGED: Condvar = Condvar::new();

fn timers() -> MutexGuard<'static, Timers> {
    TIMERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Has `what` run at `at` (on the deadline thread) unless disarmed first. None when the thread
/// cannot be started (logged): the request then has no deadline.
pub(crate) fn arm(at: Instant, what: Arc<dyn Expire>) -> Option<Ticket> {
    let mut t = timers();
    if t.thread.is_none() {
        // Its signals blocked: SIGTERM must reach the child's main thread (it stops the child).
        match ngx_wsgi::signals::spawn_helper("wsgi-deadlines", None, run) {
            Ok(handle) => t.thread = Some(handle),
            Err(e) => {
                drop(t);
                crate::log::write(
                    crate::bindings::APLOG_ERR as i32,
                    &format!("wsgi: cannot start the thread of NgxWsgiRequestTimeout: {e}"),
                );
                return None;
            }
        }
    }
    let key = (at, t.next);
    t.next += 1;
    let earliest = t
        .armed
        .first_key_value()
        .is_none_or(|(first, _)| key < *first);
    t.armed.insert(key, what);
    drop(t);
    if earliest {
        CHANGED.notify_all();
    }
    Some(Ticket(key))
}

pub(crate) fn disarm(ticket: Ticket) {
    timers().armed.remove(&ticket.0);
}

fn run() {
    loop {
        let due: Vec<Arc<dyn Expire>> = {
            let mut t = timers();
            loop {
                if t.stopping {
                    return;
                }
                let now = Instant::now();
                match t.armed.first_key_value() {
                    Some(((at, _), _)) if *at <= now => break,
                    Some(((at, _), _)) => {
                        let wait = *at - now;
                        t = CHANGED
                            .wait_timeout(t, wait)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    None => t = CHANGED.wait(t).unwrap_or_else(|e| e.into_inner()),
                }
            }
            let now = Instant::now();
            let later = t.armed.split_off(&(now, u64::MAX));
            std::mem::replace(&mut t.armed, later)
                .into_values()
                .collect()
        };
        for what in due {
            what.expire();
        }
    }
}

/// Ends the thread (at child exit: no request runs any more).
pub(crate) fn stop() {
    let handle = {
        let mut t = timers();
        t.stopping = true;
        t.armed.clear();
        t.thread.take()
    };
    CHANGED.notify_all();
    if let Some(handle) = handle {
        let _ = handle.join();
    }
    timers().stopping = false;
}
