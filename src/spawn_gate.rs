//! Programs the app starts and the server's accepting of connections take turns.
//!
//! nginx accepts a connection without close-on-exec, and the module marks it right after (see
//! the nginx module's `exec_child`): a program started in between kept that connection, another
//! client's, for as long as it ran (a probe at 3,000 new connections a second saw it for about 3
//! in 1,000 programs started). So a thread about to start a program waits for an accept under
//! way to end, and the server accepts nothing while a program is being started: its listening
//! socket stays readable, and it accepts at its next turn (after 100 ms at most: a start that
//! never ends does not stop the worker from accepting). The accepting thread never waits for
//! the GIL, which a thread waiting for its turn may hold (a fork from Python does).
//!
//! The starts covered: every `fork` of the process (a fork handler: `os.fork`, `subprocess`,
//! `multiprocessing`), and `posix_spawn` and `vfork` as Python runs them (`os.posix_spawn`,
//! `os.system`, `_posixsubprocess` on 3.14), which run no fork handler. A C library's own
//! `system()` or `popen()` cannot be reached. Apache opens its connections close-on-exec: it
//! never accepts in turn, and a start there never waits.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Programs being started now.
static STARTING: AtomicUsize = AtomicUsize::new(0);
/// The server is accepting connections (and marking them).
static ACCEPTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread is the one accepting: a fork of its own must not wait for itself.
    static ACCEPTING_HERE: Cell<bool> = const { Cell::new(false) };
    /// Since when the accepting thread has let starts go first.
    static WAITED_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A thread is about to start a program: waits until an accept under way has marked its
/// connections; none starts until [`started`].
pub fn starting() {
    STARTING.fetch_add(1, SeqCst);
    if ACCEPTING_HERE.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    while ACCEPTING.load(SeqCst) {
        std::thread::yield_now();
    }
}

/// The program has started (or failed to).
pub fn started() {
    STARTING.fetch_sub(1, SeqCst);
}

/// A start's turn, from Python, given back when dropped, however the start ends.
pub struct Turn(());

impl Turn {
    /// An accept under way is waited for without the GIL and before the start counts: counted
    /// while its thread waited to get the GIL back (5 ms at a time under contention), the
    /// start would hold the worker's accepts back for that wait too. Counted with the GIL
    /// held, it waits at most for an accept that began since, which never needs the GIL.
    pub fn take(py: pyo3::Python<'_>) -> Turn {
        py.detach(|| {
            while ACCEPTING.load(SeqCst) {
                std::thread::yield_now();
            }
        });
        starting();
        Turn(())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        started();
    }
}

/// How long the server waits for a start at most: a start that never ends (an `exec` hung on
/// a dead network file system, a `vfork` child stopped by a debugger) must not stop the worker
/// from accepting for good; past this the race is open again for that start.
const LONGEST_WAIT: Duration = Duration::from_millis(100);

/// The server's turn to accept: false while a program is being started (the server accepts at
/// its next turn), for [`LONGEST_WAIT`] at most. True must be followed by [`end_accepting`].
pub fn begin_accepting() -> bool {
    ACCEPTING.store(true, SeqCst);
    let waited_since = WAITED_SINCE.try_with(Cell::get).ok().flatten();
    if STARTING.load(SeqCst) == 0 || waited_since.is_some_and(|t| t.elapsed() > LONGEST_WAIT) {
        let _ = WAITED_SINCE.try_with(|w| w.set(None));
        let _ = ACCEPTING_HERE.try_with(|h| h.set(true));
        return true;
    }
    ACCEPTING.store(false, SeqCst);
    if waited_since.is_none() {
        let _ = WAITED_SINCE.try_with(|w| w.set(Some(Instant::now())));
    }
    false
}

/// The accepted connections are marked: programs may start.
pub fn end_accepting() {
    let _ = ACCEPTING_HERE.try_with(|h| h.set(false));
    ACCEPTING.store(false, SeqCst);
}

/// Makes every `fork` of this process take its turn. Once per process.
pub fn take_turns_with_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers plain functions, run around every fork of this process.
        unsafe {
            libc::pthread_atfork(
                Some(starting_by_fork),
                Some(started_by_fork),
                Some(alone_in_child),
            )
        };
    });
}

/// Before `fork()`, in the forking thread: atomics and `sched_yield`, async-signal-safe.
extern "C" fn starting_by_fork() {
    starting();
}

/// After `fork()`, in the parent.
extern "C" fn started_by_fork() {
    started();
}

/// After `fork()`, in the child: its one thread accepts nothing and starts nothing now. The
/// parent's state is no guide: other threads' starts were copied, and so was the accepting
/// flag the event loop may have held for an instant as the fork snapshot was taken (it sets it,
/// sees the start, and clears it), which would hold every start of the child for ever.
extern "C" fn alone_in_child() {
    STARTING.store(0, SeqCst);
    ACCEPTING.store(false, SeqCst);
    let _ = ACCEPTING_HERE.try_with(|h| h.set(false));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_and_a_start_never_hold_their_turns_at_once() {
        assert!(begin_accepting());
        let waiter = std::thread::spawn(|| {
            starting();
            // It got here only once the accept ended.
            let accepting = ACCEPTING.load(SeqCst);
            started();
            accepting
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        end_accepting();
        assert!(
            !waiter.join().unwrap(),
            "the start waited for the accept to end"
        );
        starting();
        assert!(!begin_accepting(), "no accept while a program starts");
        started();
        assert!(begin_accepting());
        // The accepting thread's own start does not wait for itself.
        starting();
        started();
        end_accepting();
        // A start that does not end holds the accepts back for LONGEST_WAIT at most.
        starting();
        assert!(!begin_accepting());
        std::thread::sleep(LONGEST_WAIT + Duration::from_millis(10));
        assert!(
            begin_accepting(),
            "a start that never ends does not stop the accepts"
        );
        end_accepting();
        started();
    }
}
