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
    /// Threads started that may still take work (busy, idle or on their way).
    alive: usize,
    /// Threads that left the idle list for good and have not ended yet: no longer counted
    /// against `wsgi_max_threads` (a request then finds room for a new one), still waited for
    /// at exit.
    retiring: usize,
    /// Threads waiting for work, the most recently idle last.
    idle: Vec<Arc<Parker>>,
    stopping: bool,
}

/// How an idle thread's wait ended.
enum Idle {
    Called(Call),
    /// Nobody called it for `IDLE_LIFETIME`: it ends, already out of the count of threads.
    Retired,
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
    /// `IDLE_LIFETIME` (shorter in tests).
    idle_lifetime: Duration,
    state: Mutex<State>,
    /// Signalled as threads end (for `stop`).
    ended: Condvar,
}

impl Threads {
    pub(crate) fn new(max: usize) -> Threads {
        Threads {
            max: max.max(1),
            idle_lifetime: IDLE_LIFETIME,
            state: Mutex::new(State::default()),
            ended: Condvar::new(),
        }
    }

    /// How many threads the pool may have (`wsgi_max_threads`).
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Whether the pool has every thread it may have.
    pub(crate) fn all_made(&self) -> bool {
        self.lock().alive >= self.max
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
        let retired = loop {
            queue.drain();
            {
                let mut st = self.lock();
                if st.stopping {
                    break false;
                }
                st.idle.push(parker.clone());
            }
            if queue.claim_waiting() {
                // Requests came while this thread was on its way here, and their submitter
                // found every thread busy: nobody else comes for them.
                if self.leave_idle(&parker) {
                    continue;
                }
                // A submitter took it from the list meanwhile: its call is on the way.
                queue.unclaim();
            }
            match self.idle(&parker) {
                Idle::Called(Call::Work) => continue,
                Idle::Called(Call::Stop) => break false,
                Idle::Retired => break true,
            }
        };
        ngx_wsgi::interpreter::forget_thread();
        crate::metrics::pool_thread(-1);
        {
            let mut st = self.lock();
            match retired {
                true => st.retiring -= 1,
                false => st.alive -= 1,
            }
        }
        self.ended.notify_all();
    }

    /// Takes `parker` out of the idle list; false when a submitter took it first.
    fn leave_idle(&self, parker: &Arc<Parker>) -> bool {
        let mut st = self.lock();
        match st.idle.iter().position(|p| Arc::ptr_eq(p, parker)) {
            Some(at) => {
                st.idle.remove(at);
                true
            }
            None => false,
        }
    }

    /// Waits in the idle list for a call; a thread nobody called for `IDLE_LIFETIME` retires
    /// (unless it is one of the last `KEPT`).
    fn idle(&self, parker: &Arc<Parker>) -> Idle {
        loop {
            if let Some(call) = parker.wait(Some(Instant::now() + self.idle_lifetime)) {
                return Idle::Called(call);
            }
            let mut st = self.lock();
            let Some(at) = st.idle.iter().position(|p| Arc::ptr_eq(p, parker)) else {
                // Taken from the list just now: its call is on the way.
                drop(st);
                return Idle::Called(parker.wait(None).unwrap_or(Call::Stop));
            };
            if st.alive > KEPT {
                st.idle.remove(at);
                // In the same step: a request that comes before this thread has ended finds
                // room for another instead of every thread busy.
                st.alive -= 1;
                st.retiring += 1;
                return Idle::Retired;
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
        while st.alive + st.retiring > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    target: "wsgi",
                    "{} pool thread(s) did not end at exit",
                    st.alive + st.retiring
                );
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

    /// A queue whose first drain holds on its way out until told, so that a job can come
    /// while its only thread is neither draining nor idle.
    #[derive(Default)]
    struct Held {
        /// (jobs waiting, drainers on their way, jobs run, first drain over)
        state: Mutex<(usize, usize, usize, bool)>,
        changed: Condvar,
    }

    impl Held {
        fn wait_until(&self, done: impl Fn(&(usize, usize, usize, bool)) -> bool) {
            let st = self.state.lock().unwrap();
            let (st, timeout) = self
                .changed
                .wait_timeout_while(st, Duration::from_secs(30), |st| !done(st))
                .unwrap();
            assert!(!timeout.timed_out(), "stuck at {:?}", *st);
        }
    }

    impl Drain for Held {
        fn drain(&'static self) {
            let mut st = self.state.lock().unwrap();
            st.1 = st.1.saturating_sub(1);
            st.2 += std::mem::take(&mut st.0);
            self.changed.notify_all();
            if st.2 == 0 {
                // The first drain: found nothing, waits on its way out for the test's job.
                st = self.changed.wait_while(st, |st| st.0 == 0).unwrap();
            }
            drop(st);
        }
        fn claim_waiting(&self) -> bool {
            let mut st = self.state.lock().unwrap();
            let claim = st.0 > 0 && st.1 == 0;
            st.1 += claim as usize;
            claim
        }
        fn unclaim(&self) {
            self.state.lock().unwrap().1 -= 1;
        }
    }

    #[test]
    fn a_job_that_comes_while_the_last_thread_goes_idle_is_run() {
        let t: &'static Threads = Box::leak(Box::new(Threads::new(1)));
        let q: &'static Held = Box::leak(Box::default());
        q.state.lock().unwrap().1 = 1;
        assert_eq!(t.start(q), Start::Started);
        q.wait_until(|st| st.1 == 0);
        // The only thread is between its drain and its wait: not idle, so every thread is busy.
        q.state.lock().unwrap().0 = 1;
        assert_eq!(t.start(q), Start::AllBusy);
        q.changed.notify_all();
        q.wait_until(|st| st.2 == 1);
        assert!(t.stop(Duration::from_secs(30)));
    }

    #[test]
    fn a_retiring_thread_leaves_room_for_a_new_one_at_once() {
        let t = Threads {
            idle_lifetime: Duration::ZERO,
            ..Threads::new(KEPT + 1)
        };
        let parker = Arc::new(Parker::default());
        {
            let mut st = t.lock();
            st.alive = KEPT + 1;
            st.idle.push(parker.clone());
        }
        assert!(matches!(t.idle(&parker), Idle::Retired));
        let st = t.lock();
        // Still to end (and waited for at exit), but not counted against the maximum.
        assert_eq!((st.alive, st.retiring, st.idle.len()), (KEPT, 1, 0));
        assert!(st.alive < t.max);
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
