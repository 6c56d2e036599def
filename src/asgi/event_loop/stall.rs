//! The loop's stall: requests handed to it wait past `wsgi_queue_timeout` because an app keeps
//! its thread (a blocking call in async code, a long computation without an await). Where that
//! thread is goes to the error log, which is what the operator needs to find the call; how long
//! the loop has left its work untaken tells the server when the stall is one it cannot wait out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::AsgiLoop;
use crate::asgi::task_watch::LoopThread;

/// At most one stack of a stalled loop per this long: the stall lasts, the log need not.
const STACK_EVERY: Duration = Duration::from_secs(10);

static START: OnceLock<Instant> = OnceLock::new();
/// When the last stack was asked for, in ms since [`START`] (0: never).
static LAST_STACK: AtomicU64 = AtomicU64::new(0);

/// A process-wide clock in ms, never 0.
pub(super) fn clock_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl AsgiLoop {
    /// How long work handed to the loop (requests, wake-ups) has waited for the loop to take
    /// it; zero when none waits. A loop that runs takes its work at its next turn, however
    /// busy; one an app keeps in a call that never returns to it does not.
    pub fn unserved_for(&self) -> Duration {
        if self.died() {
            // What it left was answered as it died: a dead loop is not a stuck one.
            return Duration::ZERO;
        }
        match self.unserved_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(clock_ms().saturating_sub(since)),
        }
    }

    /// Requests waited `waited` for the loop to start them: logs the Python stack of the
    /// loop's thread, from the watchdog's thread (this call never waits for the GIL, so the
    /// server's event loop may make it), at most once per [`STACK_EVERY`].
    pub fn log_where_stalled(&'static self, waited: Duration) {
        let Some(ident) = self.thread_ident() else {
            return;
        };
        let now = clock_ms();
        let last = LAST_STACK.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < STACK_EVERY.as_millis() as u64 {
            return;
        }
        if LAST_STACK
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        crate::watchdog::submit_call(Box::new(move |py| {
            let stack = crate::watchdog::stack_text(py, ident);
            tracing::error!(
                target: "asgi",
                "requests waited {} ms for the ASGI event loop to start them (wsgi_queue_timeout); \
                 the loop's thread is here, most recent call last (a call of an app that blocks \
                 holds every ASGI request of the worker: await it, or run it with \
                 asyncio.to_thread):\n{stack}",
                waited.as_millis()
            );
        }));
    }
}
