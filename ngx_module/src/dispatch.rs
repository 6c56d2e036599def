//! Runs requests on pool threads with as few thread hand-offs as possible, and says no at once
//! when too many wait.
//!
//! Posting one task per request costs a wake-up of a pool thread, a GIL hand-off and a wake-up
//! of the event loop for every request; on a busy worker that switching costs more than the app.
//! Instead each pool has a queue of requests, and a *drainer* is started only when none is
//! waiting to start. A drainer takes the GIL once, then runs queued requests one after the other
//! while it holds it. Each finished request goes back to the loop through the notifier, which
//! wakes the loop once per batch.
//!
//! A fast request must never wait behind a slow one: while a drainer runs a request and others
//! are queued, one more drainer is kept waiting for the GIL. When the running app lets the GIL
//! go (I/O, `time.sleep`, a streamed response waiting for the client) or CPython's switch
//! interval passes, the waiting drainer takes the GIL and the next request, and asks for a
//! successor. So queued requests get threads as fast as running ones block.
//!
//! Drainers are the module's own threads ([`crate::elastic_pool`]: made on demand up to
//! `wsgi_max_threads`, retired when idle), or the tasks of an nginx `thread_pool` named by
//! `wsgi_thread_pool` ([`crate::nginx_pool`]: that pool's fixed threads).
//!
//! Overload: a request finds the queue full (`wsgi_max_queue`) or its oldest request waiting
//! for longer than `wsgi_queue_timeout`: it is refused at once ([`Refused`]); a queued request
//! whose wait passes `wsgi_queue_timeout` is taken out and answered by the loop ([`sweep`]).

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use nginx_sys::{ngx_current_msec, ngx_event_t, ngx_msec_t, ngx_thread_pool_t};

use crate::drain::Drain;
use crate::elastic_pool::{Start, Threads};
use crate::ffi::guard;
use crate::ffi::loop_cell::LoopCell;
use crate::job::{Job, JobQueue};
use crate::nginx_pool::Tasks;
use crate::notify::Pump;

/// Runs one request's app on the calling pool thread (which holds the GIL).
pub(crate) type Runner = unsafe fn(*mut Job);

/// What the loop does with a queued request that waited too long (it never ran).
pub(crate) type Expired = unsafe fn(*mut Job);

/// How much may wait, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLimits {
    pub max_queue: usize,
    pub queue_timeout: ngx_msec_t,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `wsgi_max_queue` requests already wait.
    Full,
    /// The oldest waiting request has waited longer than `wsgi_queue_timeout`.
    Stalled,
    /// No drainer could be started (nginx refused the task, or no thread could be made).
    NoThread,
    /// It was queued, and waited longer than `wsgi_queue_timeout` for a thread.
    Expired,
    /// The pool's threads are stuck past their requests' deadlines; a fresh worker replaces
    /// this one (`stuck_pool`).
    PoolStuck,
    /// `wsgi_max_queue` ASGI requests already wait for the event loop to start them.
    LoopFull,
    /// The oldest request waiting for the ASGI event loop has waited longer than
    /// `wsgi_queue_timeout` (the loop is blocked).
    LoopStalled,
    /// It waited longer than `wsgi_queue_timeout` for the ASGI event loop to start it.
    LoopExpired,
    /// The ASGI event loop of the worker died; a fresh worker replaces it.
    LoopDied,
}

/// A request handed from the loop to a pool thread; only the thread that pops it touches it.
struct Queued {
    job: *mut Job,
    /// nginx's clock when it was queued.
    at: ngx_msec_t,
}
// SAFETY: the job is touched by one thread at a time: the loop until it is queued, then the
// drainer that pops it until it is handed back through the notifier (or the loop, if it takes
// it back out).
unsafe impl Send for Queued {}

#[derive(Default)]
pub(crate) struct State {
    jobs: VecDeque<Queued>,
    /// Drainers started that have not taken the GIL yet.
    pub(crate) pending: usize,
    /// A drainer asked the loop for one more (nginx pools only: the loop has not posted it yet).
    pub(crate) wanted: bool,
    /// Threads that requests past their deadline still hold.
    lost: usize,
    /// Since when every thread the pool may have is lost (`ngx_current_msec`).
    all_lost_since: Option<ngx_msec_t>,
    /// Since when requests have been queued with no drainer come for them (`ngx_current_msec`;
    /// set by the loop, cleared by a drainer that looks for work: queued requests that were
    /// refused or whose clients left meanwhile leave it set).
    unserved_since: Option<ngx_msec_t>,
}

impl State {
    /// Takes `job` out if no drainer has popped it yet; whether it did.
    fn take_back(&mut self, job: *mut Job) -> bool {
        match self.jobs.iter().rposition(|q| q.job == job) {
            Some(at) => self.jobs.remove(at).is_some(),
            None => false,
        }
    }
}

/// Who runs the drainers of a queue.
pub(crate) enum Executor {
    Threads(Threads),
    Tasks(Tasks),
}

/// The queue of one pool in this worker.
pub(crate) struct RunQueue {
    /// The nginx pool (NULL for the module's own threads).
    key: *mut ngx_thread_pool_t,
    pub(crate) executor: Executor,
    pub(crate) run: Runner,
    limits: QueueLimits,
    expired: Expired,
    state: Mutex<State>,
    /// Takes requests that waited too long out of the queue (event loop only).
    sweeper: UnsafeCell<ngx_event_t>,
}

// SAFETY: `key` is only compared; the executor synchronises itself; `sweeper` is only touched on
// the event loop; the rest is behind the mutex.
unsafe impl Sync for RunQueue {}
// SAFETY: as above.
unsafe impl Send for RunQueue {}

struct Registry(Vec<&'static RunQueue>);
// SAFETY: the queues are Sync and live for the process.
unsafe impl Send for Registry {}

static QUEUES: Mutex<Registry> = Mutex::new(Registry(Vec::new()));

/// How a pool is made when its queue is first used.
pub(crate) struct PoolSpec {
    /// The nginx pool of `wsgi_thread_pool`, or NULL for the module's own threads.
    pub nginx_pool: *mut ngx_thread_pool_t,
    /// `wsgi_max_threads` (own threads only).
    pub max_threads: usize,
    pub limits: QueueLimits,
    pub run: Runner,
    pub expired: Expired,
}

impl RunQueue {
    /// The queue of a pool in this worker (made on first use, kept for the process).
    ///
    /// # Safety
    /// Event-loop thread.
    pub(crate) unsafe fn of(spec: &PoolSpec) -> &'static RunQueue {
        static LAST: LoopCell<Option<&'static RunQueue>> = LoopCell::new(None);
        // SAFETY: per the function contract.
        if let Some(q) = unsafe { LAST.get() }.filter(|q| q.key == spec.nginx_pool) {
            return q;
        }
        let q = Self::find_or_make(spec);
        // SAFETY: per the function contract.
        unsafe { LAST.set(Some(q)) };
        q
    }

    fn find_or_make(spec: &PoolSpec) -> &'static RunQueue {
        let mut queues = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = queues.0.iter().find(|q| q.key == spec.nginx_pool) {
            return q;
        }
        let executor = if spec.nginx_pool.is_null() {
            Executor::Threads(Threads::new(spec.max_threads))
        } else {
            Executor::Tasks(Tasks::new(spec.nginx_pool))
        };
        let q: &'static RunQueue = Box::leak(Box::new(RunQueue {
            key: spec.nginx_pool,
            executor,
            run: spec.run,
            limits: spec.limits,
            expired: spec.expired,
            state: Mutex::new(State::default()),
            // SAFETY: an all-zero ngx_event_t is nginx's own initial state for an event.
            sweeper: UnsafeCell::new(unsafe { std::mem::zeroed() }),
        }));
        queues.0.push(q);
        q
    }

    /// How many threads the pool may have (None: an nginx `thread_pool`'s, which nginx keeps
    /// to itself).
    pub(crate) fn capacity(&self) -> Option<usize> {
        match &self.executor {
            Executor::Threads(threads) => Some(threads.max()),
            Executor::Tasks(_) => None,
        }
    }

    /// Whether the pool can add no thread for a request that waits: every one allowed is made
    /// (`wsgi_max_threads`), or it is an nginx `thread_pool`, whose threads are fixed.
    pub(crate) fn no_thread_to_add(&self) -> bool {
        match &self.executor {
            Executor::Threads(threads) => threads.all_made(),
            Executor::Tasks(_) => true,
        }
    }

    /// How long the pool has been stuck, if it is now: every thread it may have held by
    /// requests past their deadline (calls that do not return), or, with any so held, no
    /// queued request started (the stuck call keeps the GIL, or no other thread could be made).
    ///
    /// # Safety
    /// Event-loop thread (nginx's cached clock).
    pub(crate) unsafe fn stuck_for(&self) -> Option<ngx_msec_t> {
        // SAFETY: per the function contract.
        let now = unsafe { ngx_current_msec };
        let st = self.lock();
        if st.lost == 0 {
            return None;
        }
        [st.all_lost_since, st.unserved_since]
            .into_iter()
            .flatten()
            .map(|since| now.saturating_sub(since))
            .max()
    }

    /// Every queue made in this worker.
    pub(crate) fn all() -> Vec<&'static RunQueue> {
        QUEUES.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Whether a request has waited in this queue for longer than `ms` (every thread allowed is
    /// busy, or the queue's drainer is slow to come).
    ///
    /// # Safety
    /// Event-loop thread (nginx's cached clock).
    pub(crate) unsafe fn waited_longer_than(&self, ms: ngx_msec_t) -> bool {
        // SAFETY: per the function contract.
        let now = unsafe { ngx_current_msec };
        self.lock()
            .jobs
            .front()
            .is_some_and(|q| now.saturating_sub(q.at) > ms)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` and makes sure a drainer will run it; refused (and not queued) when too many
    /// wait already or no drainer could be started.
    ///
    /// # Safety
    /// Event-loop thread; `job` is live until it comes back through [`crate::notify::finished`]
    /// or the queue's `expired` callback.
    pub(crate) unsafe fn submit(&'static self, job: *mut Job) -> Result<(), Refused> {
        // SAFETY: plain read of nginx's cached clock on the event loop.
        let now = unsafe { ngx_current_msec };
        {
            let mut st = self.lock();
            if st.jobs.len() >= self.limits.max_queue {
                return Err(Refused::Full);
            }
            if st
                .jobs
                .front()
                .is_some_and(|q| now.saturating_sub(q.at) > self.limits.queue_timeout)
            {
                return Err(Refused::Stalled);
            }
            st.jobs.push_back(Queued { job, at: now });
            st.unserved_since.get_or_insert(now);
            if st.pending >= spares_for(st.jobs.len()) {
                drop(st);
                // SAFETY: event loop, per the function contract.
                unsafe { self.arm_sweeper() };
                return Ok(());
            }
            st.pending += 1;
        }
        let started = match &self.executor {
            Executor::Threads(t) => match t.start(self) {
                Start::Started => true,
                // It waits for a busy thread to come back to the queue (or for the sweeper).
                Start::AllBusy => {
                    let mut st = self.lock();
                    // A thread that went idle since `start` looked saw this request's drainer on
                    // its way and left the request to it: asked again under the queue's lock,
                    // where that thread's look (`claim_waiting`) cannot slip in between.
                    if t.start(self) != Start::Started {
                        st.pending -= 1;
                    }
                    drop(st);
                    // SAFETY: event loop, per the function contract.
                    unsafe { self.arm_sweeper() };
                    return Ok(());
                }
                Start::Failed => false,
            },
            // SAFETY: event loop, per the function contract.
            Executor::Tasks(t) => unsafe { t.post(self) },
        };
        if started {
            // SAFETY: event loop, per the function contract.
            unsafe { self.arm_sweeper() };
            return Ok(());
        }
        let mut st = self.lock();
        st.pending -= 1;
        match st.take_back(job) {
            true => Err(Refused::NoThread),
            // A running drainer took it meanwhile: it is served.
            false => Ok(()),
        }
    }

    /// The next job for a drainer that holds the GIL; `first` when the drainer just started.
    /// Also tells whether a successor must be started.
    pub(crate) fn next(&self, first: bool) -> (Option<*mut Job>, bool) {
        let mut st = self.lock();
        if first {
            st.pending -= 1;
        }
        let job = st.jobs.pop_front().map(|q| q.job);
        // A drainer that gets here (with the GIL) serves: the pool is not stuck.
        st.unserved_since = None;
        let want = job.is_some()
            && !st.jobs.is_empty()
            && st.pending < spares_for(st.jobs.len())
            && !st.wanted;
        if want {
            st.wanted = true;
        }
        (job, want)
    }

    /// A drainer asked for a successor: start one if requests still wait and none is on its way.
    fn top_up(&'static self, start: impl FnOnce() -> bool) {
        {
            let mut st = self.lock();
            st.wanted = false;
            if st.pending >= spares_for(st.jobs.len()) || st.jobs.is_empty() {
                return;
            }
            st.pending += 1;
        }
        if !start() {
            // Every thread allowed is busy (or nginx's pool queue is full: nginx logged it): the
            // running drainers still empty this queue, only without a spare.
            self.lock().pending -= 1;
        }
    }

    /// Keeps the sweeper armed while requests wait.
    ///
    /// # Safety
    /// Event-loop thread.
    unsafe fn arm_sweeper(&'static self) {
        // SAFETY: the sweeper is only touched on the event loop; the queue lives for the process.
        unsafe {
            crate::ffi::timer::keep_armed(
                &mut *self.sweeper.get(),
                Some(sweep),
                (self as *const RunQueue).cast_mut().cast(),
                sweep_interval(self.limits.queue_timeout),
            )
        }
    }

    /// Takes out the requests that waited longer than `wsgi_queue_timeout`.
    fn take_expired(&self, now: ngx_msec_t) -> (Vec<*mut Job>, bool) {
        let mut st = self.lock();
        let mut expired = Vec::new();
        while let Some(q) = st.jobs.front() {
            if now.saturating_sub(q.at) <= self.limits.queue_timeout {
                break;
            }
            expired.extend(st.jobs.pop_front().map(|q| q.job));
        }
        (expired, !st.jobs.is_empty())
    }
}

/// How many drainers may be on their way to the GIL for `queued` waiting requests: one keeps a
/// busy queue moving without waking threads for nothing; a burst (a thousand event streams
/// opening at once) gets threads started side by side instead of one after the other.
fn spares_for(queued: usize) -> usize {
    (1 + queued / 8).min(64)
}

/// How often the sweeper looks: a fraction of the timeout, so a request waits at most a little
/// longer than it.
pub(crate) fn sweep_interval(timeout: ngx_msec_t) -> ngx_msec_t {
    (timeout / 10).clamp(10, 1000)
}

/// The sweeper's timer (event loop): answers the requests that waited too long.
unsafe extern "C" fn sweep(ev: *mut ngx_event_t) {
    guard("the wsgi queue sweeper", (), || {
        // SAFETY: the event's data is its queue, which lives for the process; on the event loop.
        unsafe {
            let queue = &*((*ev).data as *const RunQueue);
            let (expired, more) = queue.take_expired(ngx_current_msec);
            for job in expired {
                (queue.expired)(job);
            }
            if more {
                nginx_sys::ngx_add_timer(ev, sweep_interval(queue.limits.queue_timeout));
            }
        }
    })
}

impl JobQueue for RunQueue {
    /// Its client went away: its slot (`wsgi_max_queue`) is free at once, not when a drainer
    /// reaches it, so a flood of reset HTTP/2 streams behind busy threads does not get live
    /// requests refused.
    fn withdraw(&self, job: *mut Job) -> bool {
        self.lock().take_back(job)
    }

    fn slot_lost(&self) {
        let capacity = self.capacity();
        crate::inflight::lost(1);
        let mut st = self.lock();
        st.lost += 1;
        if capacity.is_some_and(|c| st.lost >= c) && st.all_lost_since.is_none() {
            // SAFETY: plain read of nginx's cached clock on the event loop (the trait's contract).
            st.all_lost_since = Some(unsafe { ngx_current_msec });
        }
    }

    fn slot_back(&self) {
        let capacity = self.capacity();
        crate::inflight::lost(-1);
        let mut st = self.lock();
        st.lost = st.lost.saturating_sub(1);
        if capacity.is_none_or(|c| st.lost < c) {
            st.all_lost_since = None;
        }
    }
}

impl Drain for RunQueue {
    /// Runs queued requests on the calling pool thread while there are any (a drainer's life).
    fn drain(&'static self) {
        ngx_wsgi::interpreter::attach(|_py| {
            let mut first = true;
            loop {
                let (job, want) = self.next(first);
                first = false;
                if want {
                    match &self.executor {
                        Executor::Threads(t) => self.top_up(|| t.start(self) == Start::Started),
                        // nginx's tasks are posted by the event loop only.
                        Executor::Tasks(_) => crate::notify::schedule_lasting(self),
                    }
                }
                let Some(job) = job else { break };
                // SAFETY: the job was queued by the loop and popped by this thread only; it
                // stays alive until the loop has it back.
                unsafe { (self.run)(job) };
                crate::notify::finished(job.cast());
            }
        })
    }

    fn claim_waiting(&self) -> bool {
        let mut st = self.lock();
        if st.jobs.is_empty() || st.pending >= spares_for(st.jobs.len()) {
            return false;
        }
        st.pending += 1;
        true
    }

    fn unclaim(&self) {
        self.lock().pending -= 1;
    }
}

impl Pump for RunQueue {
    /// A drainer of an nginx pool asked for a successor.
    unsafe fn pump(&self) {
        // SAFETY: every RunQueue is leaked in `find_or_make`, so it lives for the process.
        let me: &'static RunQueue = unsafe { &*(self as *const RunQueue) };
        if let Executor::Tasks(tasks) = &me.executor {
            // SAFETY: on the event loop, per `pump`'s contract.
            me.top_up(|| unsafe { tasks.post(me) });
        }
    }
}

/// Stops the module's own threads of every queue (worker exit), each pool given `within`;
/// whether all ended.
pub(crate) fn stop_threads(within: std::time::Duration) -> bool {
    let mut all = true;
    for queue in RunQueue::all() {
        if let Executor::Threads(t) = &queue.executor {
            all &= t.stop(within);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe fn never(_: *mut Job) {}

    /// A distinct job address that is never dereferenced.
    fn fake(i: usize) -> *mut Job {
        std::ptr::without_provenance_mut(i * 8)
    }

    fn queue_with(jobs: usize, pending: usize) -> RunQueue {
        let q = RunQueue {
            key: std::ptr::null_mut(),
            executor: Executor::Threads(Threads::new(4)),
            run: never,
            limits: QueueLimits {
                max_queue: 10,
                queue_timeout: 1000,
            },
            expired: never,
            state: Mutex::new(State::default()),
            // SAFETY: all-zero is an event's initial state.
            sweeper: UnsafeCell::new(unsafe { std::mem::zeroed() }),
        };
        {
            let mut st = q.lock();
            for i in 0..jobs {
                st.jobs.push_back(Queued {
                    job: fake(i + 1),
                    at: i as ngx_msec_t * 100,
                });
            }
            st.pending = pending;
        }
        q
    }

    #[test]
    fn a_drainer_asks_for_one_successor_while_requests_wait() {
        let q = queue_with(3, 1);
        let (job, want) = q.next(true);
        assert_eq!(job, Some(fake(1)));
        assert!(want, "two more wait and no drainer is on its way");
        let (job, want) = q.next(false);
        assert_eq!(job, Some(fake(2)));
        assert!(!want, "a successor was already asked for");
        let (job, want) = q.next(false);
        assert_eq!(job, Some(fake(3)));
        assert!(!want);
        assert_eq!(q.next(false), (None, false));
    }

    #[test]
    fn no_successor_when_one_is_already_waiting_for_the_gil() {
        let q = queue_with(3, 2);
        let (_, want) = q.next(true);
        assert!(!want, "another drainer is already started");
        assert_eq!(q.lock().pending, 1);
    }

    #[test]
    fn a_burst_gets_drainers_side_by_side() {
        assert_eq!(spares_for(0), 1);
        assert_eq!(spares_for(7), 1);
        assert_eq!(spares_for(8), 2);
        assert_eq!(spares_for(100_000), 64);
        // 40 queued and two drainers on their way: a third is asked for.
        let q = queue_with(41, 3);
        let (_, want) = q.next(true);
        assert!(want);
    }

    #[test]
    fn the_last_request_needs_no_successor() {
        let q = queue_with(1, 1);
        assert_eq!(q.next(true), (Some(fake(1)), false));
    }

    #[test]
    fn requests_that_waited_too_long_come_out_oldest_first() {
        // Queued at 0, 100, 200, 300 ms; the timeout is 1000 ms.
        let q = queue_with(4, 0);
        assert_eq!(q.take_expired(1000), (vec![], true));
        assert_eq!(q.take_expired(1150), (vec![fake(1), fake(2)], true));
        assert_eq!(q.take_expired(5000), (vec![fake(3), fake(4)], false));
    }

    #[test]
    fn a_withdrawn_request_frees_its_slot_and_no_drainer_gets_it() {
        let q = queue_with(3, 1);
        assert!(q.withdraw(fake(2)));
        assert!(!q.withdraw(fake(2)), "it is out already");
        assert_eq!(q.next(true).0, Some(fake(1)));
        assert!(!q.withdraw(fake(1)), "a drainer has it");
        assert_eq!(q.next(false).0, Some(fake(3)));
        assert_eq!(q.next(false), (None, false));
    }

    #[test]
    fn the_sweeper_looks_often_enough() {
        assert_eq!(sweep_interval(10_000), 1000);
        assert_eq!(sweep_interval(500), 50);
        assert_eq!(sweep_interval(0), 10);
    }
}
