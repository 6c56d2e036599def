//! The module's own pool threads: made when a request needs one and none is idle, up to
//! `wsgi_max_threads`; an idle thread waits without the GIL and ends after a while of nothing
//! to do (keeping a few). A thread keeps one Python thread state for its whole life, so each
//! request still runs, with its whole response iteration, on one thread state.
//!
//! Streaming responses and apps that block (a long poll, an SSE stream waiting on a queue) hold
//! their thread for as long as they run: the pool grows with them instead of making short
//! requests wait behind them.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::drain::Drain;

/// How long an idle thread waits for work before it ends.
const IDLE_LIFETIME: Duration = Duration::from_secs(60);
/// Threads kept however long they idle.
const KEPT: usize = 2;
/// The stack of a pool thread: what CPython's own threads get by default on Linux.
const STACK_SIZE: usize = 8 << 20;

/// Why a parked thread wakes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Work,
    Stop,
}

/// Where one idle thread waits.
#[derive(Default)]
struct Parker {
    call: Mutex<Option<Call>>,
    woken: Condvar,
}

impl Parker {
    fn call(&self, call: Call) {
        *self.call.lock().unwrap_or_else(|e| e.into_inner()) = Some(call);
        self.woken.notify_one();
    }

    /// Waits for a call until `deadline` (None: for ever).
    fn wait(&self, deadline: Option<Instant>) -> Option<Call> {
        let mut call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = call.take() {
                return Some(c);
            }
            match deadline {
                None => call = self.woken.wait(call).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    call = self
                        .woken
                        .wait_timeout(call, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// Threads started and not yet ended.
    alive: usize,
    /// Threads waiting for work, the most recently idle last.
    idle: Vec<Arc<Parker>>,
    stopping: bool,
}

/// What [`Threads::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Started,
    /// `wsgi_max_threads` are all busy: the work waits for one of them.
    AllBusy,
    /// No thread could be made (or the pool is stopping).
    Failed,
}

/// One pool of the module's own threads.
pub(crate) struct Threads {
    max: usize,
    state: Mutex<State>,
    /// Signalled as threads end (for `stop`).
    ended: Condvar,
}

impl Threads {
    pub(crate) fn new(max: usize) -> Threads {
        Threads {
            max: max.max(1),
            state: Mutex::new(State::default()),
            ended: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Has a thread drain `queue`: an idle one, else a new one.
    pub(crate) fn start(&'static self, queue: &'static dyn Drain) -> Start {
        let parker = {
            let mut st = self.lock();
            if st.stopping {
                return Start::Failed;
            }
            match st.idle.pop() {
                Some(p) => Some(p),
                None if st.alive < self.max => {
                    st.alive += 1;
                    None
                }
                None => return Start::AllBusy,
            }
        };
        if let Some(p) = parker {
            p.call(Call::Work);
            return Start::Started;
        }
        // Signals are the event loop's, as in nginx's own pool threads.
        let spawned = ngx_wsgi::signals::spawn_helper("wsgi", Some(STACK_SIZE), move || {
            self.thread_main(queue)
        });
        if let Err(e) = spawned {
            tracing::error!(target: "wsgi", "cannot start a pool thread: {e}");
            self.lock().alive -= 1;
            self.ended.notify_all();
            return Start::Failed;
        }
        crate::metrics::pool_thread(1);
        Start::Started
    }

    fn thread_main(&'static self, queue: &'static dyn Drain) {
        let parker = Arc::new(Parker::default());
        loop {
            queue.drain();
            {
                let mut st = self.lock();
                if st.stopping {
                    break;
                }
                st.idle.push(parker.clone());
            }
            match self.idle(&parker) {
                Call::Work => continue,
                Call::Stop => break,
            }
        }
        ngx_wsgi::interpreter::forget_thread();
        crate::metrics::pool_thread(-1);
        self.lock().alive -= 1;
        self.ended.notify_all();
    }

    /// Waits in the idle list for a call; a thread nobody called for `IDLE_LIFETIME` ends
    /// (unless it is one of the last `KEPT`).
    fn idle(&self, parker: &Arc<Parker>) -> Call {
        loop {
            if let Some(call) = parker.wait(Some(Instant::now() + IDLE_LIFETIME)) {
                return call;
            }
            let mut st = self.lock();
            let Some(at) = st.idle.iter().position(|p| Arc::ptr_eq(p, parker)) else {
                // Taken from the list just now: its call is on the way.
                drop(st);
                return parker.wait(None).unwrap_or(Call::Stop);
            };
            if st.alive > KEPT {
                st.idle.remove(at);
                return Call::Stop;
            }
        }
    }

    /// Ends every thread: idle ones at once, busy ones when their request is done; waits for
    /// them for at most `within`, and says whether all ended.
    pub(crate) fn stop(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut st = self.lock();
        st.stopping = true;
        for p in st.idle.drain(..) {
            p.call(Call::Stop);
        }
        while st.alive > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(target: "wsgi", "{} pool thread(s) did not end at exit", st.alive);
                return false;
            }
            st = self
                .ended
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parker_returns_its_call_or_times_out() {
        let p = Arc::new(Parker::default());
        assert_eq!(p.wait(Some(Instant::now())), None);
        p.call(Call::Work);
        assert_eq!(p.wait(None), Some(Call::Work));
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait(None))
        };
        p.call(Call::Stop);
        assert_eq!(waiter.join().unwrap(), Some(Call::Stop));
    }

    #[test]
    fn no_thread_beyond_the_maximum_and_none_once_stopping() {
        let t: &'static Threads = Box::leak(Box::new(Threads::new(1)));
        t.lock().alive = 1;
        struct Nothing;
        impl Drain for Nothing {
            fn drain(&'static self) {}
        }
        assert_eq!(t.start(&Nothing), Start::AllBusy);
        t.lock().alive = 0;
        t.stop(Duration::ZERO);
        assert_eq!(t.start(&Nothing), Start::Failed);
        assert_eq!(t.lock().alive, 0);
    }
}
