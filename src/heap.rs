//! The C heap of a server process (glibc's `malloc`, which CPython uses for every object above
//! 512 bytes): how many arenas its threads share, and giving back what a burst freed.
//!
//! glibc gives each new thread an arena of its own, up to eight per core, and never returns an
//! arena's free pages below its top: a burst of 128 slow requests (one thread each, a few MB of
//! bytes objects each) left a worker at 479 MB once they had ended, 352 MB after their idle
//! threads too had ended, of which `malloc_trim` gave back all but 20 MB. Python's threads take
//! turns under the GIL, so arenas of their own buy them next to nothing: two arenas (measured
//! the same CPU per request as sixteen) left the same burst at 71 MB, and a trim once the
//! process is quiet takes that back to its size before the burst.

use std::sync::atomic::{AtomicBool, Ordering};

/// Arenas of a process that runs Python (glibc hands its threads one or the other in turn);
/// as many as a host's cores is no faster under the GIL.
pub const ARENAS: i32 = 2;

/// What [`limit_arenas`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arenas {
    /// Limited to [`ARENAS`].
    Limited,
    /// `MALLOC_ARENA_MAX` is in the environment: glibc took the administrator's number.
    Environment(String),
    /// Not glibc: its allocator is left as it is.
    Unsupported,
}

/// Limits the arenas of this process and of the processes it forks afterwards, unless the
/// environment sets `MALLOC_ARENA_MAX`. glibc fixes the limit when a thread first needs an arena
/// of its own: call it while the process has one thread (a server's parent, before it forks
/// its workers).
pub fn limit_arenas() -> Arenas {
    limit_arenas_unless(std::env::var_os("MALLOC_ARENA_MAX").as_deref())
}

fn limit_arenas_unless(environment: Option<&std::ffi::OsStr>) -> Arenas {
    match environment {
        Some(value) => Arenas::Environment(value.to_string_lossy().into_owned()),
        None => limit_arenas_to(ARENAS),
    }
}

#[cfg(target_env = "gnu")]
fn limit_arenas_to(n: i32) -> Arenas {
    // SAFETY: mallopt only sets glibc's tuning parameter; it returns 0 on a bad value.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, n) } == 1 {
        Arenas::Limited
    } else {
        Arenas::Unsupported
    }
}

#[cfg(not(target_env = "gnu"))]
fn limit_arenas_to(_n: i32) -> Arenas {
    Arenas::Unsupported
}

/// A trim is running: a second one would only wait for its locks.
static TRIMMING: AtomicBool = AtomicBool::new(false);

/// Gives the heap's free pages back to the system on a short-lived thread of its own (a trim of
/// a few hundred MB takes tens of milliseconds, holding each arena's lock in turn: not a call
/// for a server's event loop, whose own mallocs meanwhile wait at most for one arena's turn,
/// in a quiet process). Does nothing while one runs.
pub fn give_back_in_background() {
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = crate::signals::spawn_helper("wsgi-heap-trim", Some(64 * 1024), || {
        give_back();
        TRIMMING.store(false, Ordering::Release);
    });
    if spawned.is_err() {
        TRIMMING.store(false, Ordering::Release);
    }
}

/// Gives the heap's free pages back to the system, now, on this thread.
#[cfg(target_env = "gnu")]
pub fn give_back() {
    // SAFETY: malloc_trim takes each arena's lock itself; 0 keeps no padding.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
pub fn give_back() {}

/// When a process is quiet enough to give back what its last busy spell freed: no request
/// started or ended during the last tick, and some did since the last trim. A busy process
/// keeps its heap (it would only fault the pages in again); one that long-lived connections
/// keep busy without new requests is quiet.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet {
    at_last_tick: u64,
    at_last_trim: u64,
}

impl Quiet {
    pub const fn new() -> Quiet {
        Quiet {
            at_last_tick: 0,
            at_last_trim: 0,
        }
    }

    /// One tick (about a second) with `activity` requests started and ended in all; whether to
    /// trim now.
    pub fn tick(&mut self, activity: u64) -> bool {
        let quiet = activity == self.at_last_tick;
        self.at_last_tick = activity;
        if quiet && activity != self.at_last_trim {
            self.at_last_trim = activity;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_a_busy_spell_when_a_tick_is_quiet() {
        let mut quiet = Quiet::default();
        assert!(!quiet.tick(0), "nothing ran yet");
        assert!(!quiet.tick(5), "busy");
        assert!(!quiet.tick(40), "busy");
        assert!(quiet.tick(40), "the first quiet tick after it");
        assert!(!quiet.tick(40), "once per busy spell");
        assert!(!quiet.tick(41), "a request started");
        assert!(quiet.tick(41), "quiet again");
    }

    #[test]
    fn the_administrators_arena_count_wins() {
        let given = std::ffi::OsStr::new("3");
        assert_eq!(
            limit_arenas_unless(Some(given)),
            Arenas::Environment("3".into())
        );
    }
}
