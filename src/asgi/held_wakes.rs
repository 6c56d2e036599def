//! Wake-ups the event loop's thread owes the server, sent once when the loop's current round of
//! callbacks is over rather than once per response. Under load the steps of many requests' tasks
//! run in one round, and each wake-up of the server's sleeping thread costs both threads a
//! context switch (the FastAPI route: 1.4 times the requests per second, see bench/README.md).
//!
//! The round's end is the loop's own eventfd: the first wake-up held in a round writes it, and
//! the loop's reader of it (`drain`) sends what is held when the loop next polls, after the
//! callbacks already queued. An eventfd stays readable until read, so that end cannot be lost,
//! and holding calls no Python.
//!
//! Holding pays only under load, and must stay bounded: a coroutine doing synchronous work keeps
//! the loop in one callback, and the responses finished before it in the round would wait with
//! it. So a wake-up is held only
//! while the poller thread ticks, which sends any wake-up held longer than [`MAX_HOLD`]; it
//! starts when two wake-ups come closer together than that, and parks after two of its ticks saw
//! no hold. Below that rate every wake-up goes at once.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest a finished response waits for its wake-up when the loop's round runs long (give
/// or take the poller's own scheduling).
pub const MAX_HOLD: Duration = Duration::from_millis(2);

/// How the server is woken (set once by the server's adapter).
static WAKE: OnceLock<fn()> = OnceLock::new();
/// When the held wake-up was first held, in microseconds since [`now_us`]'s epoch (0: none held).
static HELD_SINCE: AtomicU64 = AtomicU64::new(0);
/// Wake-ups held so far (the poller sees from it whether holding goes on).
static HOLDS: AtomicU64 = AtomicU64::new(0);
/// When the last wake-up went at once (microseconds since the epoch; 0: never).
static LAST_SENT: AtomicU64 = AtomicU64::new(0);
/// [`Poller::Ticking`], readable without the lock: a wake-up may be held.
static TICKING: AtomicBool = AtomicBool::new(false);
/// Held wake-ups the poller sent because they came due (a round that ran long).
static SENT_DUE: AtomicU64 = AtomicU64::new(0);
/// Tests keep the poller ticking with it, whatever the holds.
#[cfg(test)]
static KEEP_TICKING: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Poller {
    /// Not started yet.
    Absent,
    /// Its thread could not be started: nothing is ever held.
    Failed,
    Parked,
    Ticking,
}

static POLLER: Mutex<Poller> = Mutex::new(Poller::Absent);
static POLLER_CHANGED: Condvar = Condvar::new();

thread_local! {
    /// The loop's own eventfd, on the loop's thread while the loop runs (-1 elsewhere).
    static LOOP_FD: Cell<RawFd> = const { Cell::new(-1) };
    /// The loop's eventfd was written for the end of this round.
    static ROUND_END_ASKED: Cell<bool> = const { Cell::new(false) };
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

/// Makes the calling thread the loop's, whose wake-ups are held until `loop_fd` (the eventfd
/// whose reader calls [`round_ended`]) is read (the loop's thread, before the loop runs).
pub(crate) fn install(loop_fd: RawFd) {
    LOOP_FD.with(|fd| fd.set(loop_fd));
    ROUND_END_ASKED.with(|asked| asked.set(false));
}

/// The loop stopped: what is held goes now, and later wake-ups from this thread go at once.
pub(crate) fn uninstall() {
    LOOP_FD.with(|fd| fd.set(-1));
    send();
}

/// The loop's round is over (the reader of its eventfd runs): what is held goes now.
pub(crate) fn round_ended() {
    ROUND_END_ASKED.with(|asked| asked.set(false));
    send();
}

/// Holds the server's wake-up until the loop's round ends (true), or says to send it now
/// (false): on any thread but the loop's, and on the loop's when the poller does not tick.
pub fn hold() -> bool {
    let loop_fd = LOOP_FD.with(Cell::get);
    if loop_fd < 0 || WAKE.get().is_none() {
        return false;
    }
    let now = now_us();
    if !TICKING.load(Ordering::SeqCst) {
        let last = LAST_SENT.swap(now, Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < max_hold_us() {
            start_poller();
        }
        return false;
    }
    HOLDS.fetch_add(1, Ordering::Relaxed);
    if let Err(since) = HELD_SINCE.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
        if now.saturating_sub(since) > max_hold_us() {
            send();
        }
    }
    // The poller parked meanwhile (it saw no hold before this one): nobody would bound it.
    if !TICKING.load(Ordering::SeqCst) {
        send();
        return true;
    }
    if !ROUND_END_ASKED.with(|asked| asked.replace(true)) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the loop's eventfd, open while its loop
        // runs (install/uninstall bracket it); a full counter still leaves it readable.
        unsafe { libc::write(loop_fd, (&one as *const u64).cast(), 8) };
    }
    true
}

/// Another thread left the server work behind a wake-up that may be held: what is held goes
/// now, so that work (a WSGI response of the same worker, a log line) does not wait for the
/// loop's round. Nothing to do on the loop's own thread (its work joins the round's wake-up) or
/// when nothing is held. Work queued between the loop's item and its hold (a few instructions
/// apart) finds nothing held yet and waits as before: for the round's end, or the poller.
pub fn other_thread_queued() {
    if LOOP_FD.with(Cell::get) < 0 && HELD_SINCE.load(Ordering::SeqCst) != 0 {
        send();
    }
}

fn send() {
    if HELD_SINCE.swap(0, Ordering::SeqCst) != 0 {
        if let Some(wake) = WAKE.get() {
            wake();
        }
    }
}

/// Has the poller tick (starting its thread the first time).
fn start_poller() {
    let mut poller = POLLER.lock().unwrap_or_else(|e| e.into_inner());
    match *poller {
        Poller::Ticking | Poller::Failed => return,
        Poller::Parked => {}
        Poller::Absent => {
            if let Err(e) = crate::signals::spawn_helper("asgi-wake-poller", None, poll) {
                *poller = Poller::Failed;
                drop(poller);
                // Nothing is held without it: every wake-up goes at once, as before holding.
                tracing::warn!(target: "asgi", "cannot start the thread that bounds held wake-ups, so none is held: {e}");
                return;
            }
        }
    }
    *poller = Poller::Ticking;
    TICKING.store(true, Ordering::SeqCst);
    drop(poller);
    POLLER_CHANGED.notify_one();
}

/// The poller thread: while ticking, sends what has been held for [`MAX_HOLD`]; parks when two
/// ticks saw no new hold.
fn poll() {
    let mut seen = HOLDS.load(Ordering::Relaxed);
    let mut quiet = 0;
    loop {
        {
            let mut poller = POLLER.lock().unwrap_or_else(|e| e.into_inner());
            while *poller != Poller::Ticking {
                poller = POLLER_CHANGED
                    .wait(poller)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        // Until the held wake-up is due, or a whole tick when none is held.
        let since = HELD_SINCE.load(Ordering::SeqCst);
        let age = if since == 0 {
            0
        } else {
            now_us().saturating_sub(since)
        };
        std::thread::sleep(Duration::from_micros(
            max_hold_us().saturating_sub(age).max(100),
        ));
        let since = HELD_SINCE.load(Ordering::SeqCst);
        if since != 0 && now_us().saturating_sub(since) >= max_hold_us() {
            SENT_DUE.fetch_add(1, Ordering::Relaxed);
            send();
        }
        let holds = HOLDS.load(Ordering::Relaxed);
        quiet = if holds == seen { quiet + 1 } else { 0 };
        seen = holds;
        #[cfg(test)]
        if KEEP_TICKING.load(Ordering::SeqCst) {
            quiet = 0;
        }
        if quiet >= 2 {
            quiet = 0;
            let mut poller = POLLER.lock().unwrap_or_else(|e| e.into_inner());
            *poller = Poller::Parked;
            TICKING.store(false, Ordering::SeqCst);
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

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn held_only_on_the_loops_thread_under_load_and_the_poller_bounds_it() {
        set_wake(count_wake);
        // SAFETY: plain syscall.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        // Not the loop's thread: never held.
        assert!(!hold());
        install(efd);
        KEEP_TICKING.store(true, Ordering::SeqCst);
        // Two wake-ups within MAX_HOLD start the poller; both go at once (tried again while a
        // paused test thread leaves them further apart).
        for _ in 0..1000 {
            if TICKING.load(Ordering::SeqCst) {
                break;
            }
            assert!(!hold());
        }
        assert!(
            TICKING.load(Ordering::SeqCst),
            "two close wake-ups start the poller"
        );
        // Now held: the loop's eventfd asks for the round's end, once per round.
        let (woken, due) = (
            WOKEN.load(Ordering::SeqCst),
            SENT_DUE.load(Ordering::SeqCst),
        );
        assert!(hold());
        assert!(hold());
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64.
        let read = unsafe { libc::read(efd, (&mut count as *mut u64).cast(), 8) };
        assert_eq!((read, count), (8, 1), "one write for the round");
        // The round never ends here (a blocked loop): the poller sends it when it is due.
        wait_until("the held wake-up sent as due", || {
            SENT_DUE.load(Ordering::SeqCst) > due && HELD_SINCE.load(Ordering::SeqCst) == 0
        });
        // Once, unless this thread paused between its two holds for longer than MAX_HOLD.
        let sent = WOKEN.load(Ordering::SeqCst);
        assert!(sent > woken);
        round_ended();
        assert_eq!(WOKEN.load(Ordering::SeqCst), sent, "nothing left to send");
        // A round that ends in time: its end sends it (or the poller, if this thread paused).
        assert!(hold());
        round_ended();
        assert_eq!(WOKEN.load(Ordering::SeqCst), sent + 1);
        // Work another thread queues behind a held wake-up sends it; the loop's own does not
        // (tried again while a paused test thread lets the poller send it first).
        let mut released = false;
        for _ in 0..100 {
            let (woken, due) = (
                WOKEN.load(Ordering::SeqCst),
                SENT_DUE.load(Ordering::SeqCst),
            );
            assert!(hold());
            other_thread_queued();
            let kept = HELD_SINCE.load(Ordering::SeqCst) != 0;
            std::thread::spawn(other_thread_queued).join().unwrap();
            let sent_by_release =
                WOKEN.load(Ordering::SeqCst) == woken + 1 && HELD_SINCE.load(Ordering::SeqCst) == 0;
            round_ended();
            if kept && sent_by_release && SENT_DUE.load(Ordering::SeqCst) == due {
                released = true;
                break;
            }
        }
        assert!(
            released,
            "another thread's work sends the held wake-up, the loop's own does not"
        );
        // No more holds: it parks, and wake-ups go at once again.
        KEEP_TICKING.store(false, Ordering::SeqCst);
        wait_until("the poller parked", || !TICKING.load(Ordering::SeqCst));
        assert!(*POLLER.lock().unwrap() == Poller::Parked);
        uninstall();
        assert!(!hold());
        // SAFETY: closes the test's own descriptor.
        unsafe { libc::close(efd) };
    }
}
