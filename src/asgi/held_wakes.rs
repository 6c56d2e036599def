//! Wake-ups the event loop's thread owes the server, sent once when the loop's current round of
//! callbacks is over rather than once per response. Under load the steps of many requests' tasks
//! run in one round, and each wake-up of the server's sleeping thread costs both threads a
//! context switch (the FastAPI route: 1.4 times the requests per second, see bench/README.md).
//!
//! Holding pays only under load, and must stay bounded: a coroutine doing synchronous work keeps
//! the loop in one callback, and the responses finished before it in the round would wait with
//! it. So a wake-up is held only while the poller thread runs, which sends any wake-up held
//! longer than [`MAX_HOLD`]; it starts when two wake-ups come closer together than that, and
//! parks after two of its ticks saw nothing held. Below that rate every wake-up goes at once.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyCFunction;

/// The longest a finished response waits for its wake-up (twice this, at worst, by the poller).
pub const MAX_HOLD: Duration = Duration::from_millis(2);

/// How the server is woken (set once by the server's adapter).
static WAKE: OnceLock<fn()> = OnceLock::new();
/// When the held wake-up was first held, in microseconds since [`epoch`] (0: none held).
static HELD_SINCE: AtomicU64 = AtomicU64::new(0);
/// Wake-ups held so far (the poller sees from it whether holding goes on).
static HOLDS: AtomicU64 = AtomicU64::new(0);
/// When the last wake-up went at once (microseconds since [`epoch`]).
static LAST_SENT: AtomicU64 = AtomicU64::new(0);
/// The poller ticks: a wake-up may be held.
static POLLING: AtomicBool = AtomicBool::new(false);

/// The poller thread's parking place: true while it is asked to tick.
static POLLER: Mutex<Option<bool>> = Mutex::new(None);
static POLLER_CHANGED: Condvar = Condvar::new();

struct LoopSide {
    /// `loop.call_soon`, bound.
    call_soon: Py<PyAny>,
    /// The callback that sends what is held.
    flush: Py<PyAny>,
    /// A flush is already scheduled for this round.
    scheduled: bool,
}

thread_local! {
    /// Set on the event loop's thread only, while its loop runs.
    static LOOP_SIDE: RefCell<Option<LoopSide>> = const { RefCell::new(None) };
}

fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Never 0, which means "nothing held".
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

fn max_hold_us() -> u64 {
    MAX_HOLD.as_micros() as u64
}

/// Sets how the server is woken (once, by the server's adapter, before any request).
pub fn set_wake(wake: fn()) {
    let _ = WAKE.set(wake);
}

/// Makes the calling thread the one whose wake-ups are held, for `event_loop` (its thread,
/// before the loop runs).
pub(crate) fn install(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let flush = PyCFunction::new_closure(py, None, None, |_args, _kwargs| -> PyResult<()> {
        set_scheduled(false);
        send();
        Ok(())
    })?;
    let side = LoopSide {
        call_soon: event_loop.getattr("call_soon")?.unbind(),
        flush: flush.into_any().unbind(),
        scheduled: false,
    };
    LOOP_SIDE.with(|s| *s.borrow_mut() = Some(side));
    Ok(())
}

/// The loop stopped: what is held goes now, and later wake-ups from this thread go at once.
pub(crate) fn uninstall() {
    let side = LOOP_SIDE.with(|s| s.borrow_mut().take());
    drop(side);
    send();
}

fn set_scheduled(scheduled: bool) {
    LOOP_SIDE.with(|side| {
        if let Ok(mut side) = side.try_borrow_mut() {
            if let Some(s) = side.as_mut() {
                s.scheduled = scheduled;
            }
        }
    });
}

/// Holds the server's wake-up until the loop's round ends (true), or says to send it now
/// (false): on any thread but the loop's, and on the loop's when the poller does not run.
pub fn hold() -> bool {
    let schedule = match LOOP_SIDE.with(|side| match side.try_borrow_mut() {
        Ok(mut side) => side
            .as_mut()
            .map(|s| !std::mem::replace(&mut s.scheduled, true)),
        // Re-entered while scheduling (a finaliser the call below ran): held with the rest.
        Err(_) => Some(false),
    }) {
        Some(schedule) => schedule,
        None => return false,
    };
    let now = now_us();
    if WAKE.get().is_none() || !POLLING.load(Ordering::SeqCst) {
        if schedule {
            set_scheduled(false);
        }
        let last = LAST_SENT.swap(now, Ordering::Relaxed);
        if now.saturating_sub(last) < max_hold_us() {
            start_poller();
        }
        return false;
    }
    HOLDS.fetch_add(1, Ordering::Relaxed);
    match HELD_SINCE.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
        Err(since) if now.saturating_sub(since) > max_hold_us() => send(),
        _ => {}
    }
    // The poller parked meanwhile (it saw nothing held before this): nobody would bound it.
    if !POLLING.load(Ordering::SeqCst) {
        send();
    }
    if schedule {
        // Called with no borrow of the loop's side held: a finaliser the call runs may hold a
        // wake-up too.
        let scheduled = crate::interpreter::attach(|py| {
            let (call_soon, flush) = LOOP_SIDE.with(|side| {
                let side = side.borrow();
                let s = side.as_ref()?;
                Some((s.call_soon.clone_ref(py), s.flush.clone_ref(py)))
            })?;
            call_soon.bind(py).call1((flush,)).ok().map(drop)
        });
        if scheduled.is_none() {
            // A closed loop: no round will end to send it.
            set_scheduled(false);
            send();
        }
    }
    true
}

fn send() {
    if HELD_SINCE.swap(0, Ordering::SeqCst) != 0 {
        if let Some(wake) = WAKE.get() {
            wake();
        }
    }
}

/// Asks the poller to tick (starting its thread the first time).
fn start_poller() {
    let mut poller = POLLER.lock().unwrap_or_else(|e| e.into_inner());
    match *poller {
        Some(true) => return,
        Some(false) => {}
        None => {
            if let Err(e) = crate::signals::spawn_helper("asgi-wake-poller", None, poll) {
                // Nothing is held without it: every wake-up goes at once, as it would anyway.
                tracing::warn!(target: "asgi", "cannot start the thread that bounds held wake-ups: {e}");
                *poller = Some(false);
                return;
            }
        }
    }
    *poller = Some(true);
    POLLING.store(true, Ordering::SeqCst);
    drop(poller);
    POLLER_CHANGED.notify_one();
}

/// The poller thread: while asked to tick, sends every MAX_HOLD what is held too long; parks
/// when two ticks saw no new hold.
fn poll() {
    let mut seen = HOLDS.load(Ordering::Relaxed);
    let mut quiet = 0;
    loop {
        {
            let mut poller = POLLER.lock().unwrap_or_else(|e| e.into_inner());
            while *poller != Some(true) {
                poller = POLLER_CHANGED
                    .wait(poller)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        std::thread::sleep(MAX_HOLD);
        let since = HELD_SINCE.load(Ordering::SeqCst);
        if since != 0 && now_us().saturating_sub(since) >= max_hold_us() {
            send();
        }
        let holds = HOLDS.load(Ordering::Relaxed);
        quiet = if holds == seen { quiet + 1 } else { 0 };
        seen = holds;
        if quiet >= 2 {
            quiet = 0;
            let mut poller = POLLER.lock().unwrap_or_else(|e| e.into_inner());
            *poller = Some(false);
            POLLING.store(false, Ordering::SeqCst);
            drop(poller);
            // A hold that raced the stop (it saw the poller still ticking).
            send();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static WOKEN: AtomicUsize = AtomicUsize::new(0);

    fn count_wake() {
        WOKEN.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn no_thread_but_the_loops_holds_and_a_burst_starts_the_poller_which_parks_again() {
        set_wake(count_wake);
        // Not the loop's thread: never held.
        assert!(!hold());
        // The poller is started by the rate of wake-ups on the loop's thread only; here it is
        // started by hand, as two close wake-ups there would.
        start_poller();
        assert!(POLLING.load(Ordering::SeqCst));
        // Something held with nobody to flush it: the poller sends it within a few ticks.
        HELD_SINCE.store(now_us(), Ordering::SeqCst);
        let before = WOKEN.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while WOKEN.load(Ordering::SeqCst) == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            WOKEN.load(Ordering::SeqCst),
            before + 1,
            "the held wake-up was sent once"
        );
        assert_eq!(HELD_SINCE.load(Ordering::SeqCst), 0);
        // No more holds: it parks.
        while POLLING.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!POLLING.load(Ordering::SeqCst), "the poller parked");
        assert_eq!(*POLLER.lock().unwrap(), Some(false));
    }
}
