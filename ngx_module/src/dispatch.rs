//! Runs requests on an nginx thread pool with as few thread hand-offs as possible.
//!
//! Posting one nginx task per request costs a wake-up of a pool thread, a GIL hand-off and a
//! wake-up of the event loop for every request; on a busy worker that switching costs more than
//! the app. Instead each pool gets a queue of requests, and the event loop posts a *drainer*
//! task only when none is waiting to start. A drainer takes the GIL once, then runs queued
//! requests one after the other while it holds it. Each finished request goes back to the loop
//! through the notifier, which wakes the loop once per batch.
//!
//! A fast request must never wait behind a slow one: while a drainer runs a request and others
//! are queued, one more drainer is kept waiting for the GIL. When the running app lets the GIL
//! go (I/O, `time.sleep`, a streamed response waiting for the client) or CPython's switch
//! interval passes, the waiting drainer takes the GIL and the next request, and asks for a
//! successor. So queued requests get threads as fast as running ones block, up to the pool's
//! size, as with one task per request.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::Mutex;

use nginx_sys::{
    ngx_event_t, ngx_int_t, ngx_log_t, ngx_thread_pool_t, ngx_thread_task_post, ngx_thread_task_t,
    NGX_OK,
};

use crate::ffi::guard;
use crate::ffi::loop_cell::LoopCell;
use crate::job::Job;
use crate::notify::Pump;

/// Runs one request's app on the calling pool thread (which holds the GIL).
pub(crate) type Runner = unsafe fn(*mut Job);

/// Requests queued per pool beyond which new ones get a 503 (nginx's own `max_queue` default).
const MAX_QUEUED: usize = 65536;

/// A request handed from the loop to a pool thread; only the thread that pops it touches it.
struct Queued(*mut Job);
// SAFETY: the job is touched by one thread at a time: the loop until it is queued, then the
// drainer that pops it until it is handed back through the notifier.
unsafe impl Send for Queued {}

struct Drainer {
    /// First, so that a pointer to the drainer is a pointer to its task.
    task: ngx_thread_task_t,
    queue: &'static RunQueue,
}

struct TaskPtr(*mut Drainer);
// SAFETY: idle drainers are only taken and posted by the event loop.
unsafe impl Send for TaskPtr {}

#[derive(Default)]
struct State {
    jobs: VecDeque<Queued>,
    /// Drainers posted that have not taken the GIL yet.
    pending: usize,
    /// A drainer asked the loop for one more (the loop has not posted it yet).
    wanted: bool,
    /// Drainer tasks whose completion handler has run: free to post again.
    idle: Vec<TaskPtr>,
}

/// The queue of one nginx thread pool in this worker.
pub(crate) struct RunQueue {
    pool: *mut ngx_thread_pool_t,
    run: Runner,
    state: Mutex<State>,
}

// SAFETY: `pool` is only used by the event loop (to post tasks); the rest is behind the mutex.
unsafe impl Sync for RunQueue {}
// SAFETY: as above.
unsafe impl Send for RunQueue {}

struct Registry(Vec<&'static RunQueue>);
// SAFETY: only the event loop reads or grows the registry.
unsafe impl Send for Registry {}

static QUEUES: Mutex<Registry> = Mutex::new(Registry(Vec::new()));

impl RunQueue {
    /// The queue of `pool` in this worker (made on first use, kept for the process), whose
    /// drainers run each request with `run`.
    ///
    /// # Safety
    /// Event-loop thread.
    pub(crate) unsafe fn of(pool: *mut ngx_thread_pool_t, run: Runner) -> &'static RunQueue {
        static LAST: LoopCell<Option<&'static RunQueue>> = LoopCell::new(None);
        // SAFETY: per the function contract.
        if let Some(q) = unsafe { LAST.get() }.filter(|q| q.pool == pool) {
            return q;
        }
        let q = Self::find_or_make(pool, run);
        // SAFETY: per the function contract.
        unsafe { LAST.set(Some(q)) };
        q
    }

    fn find_or_make(pool: *mut ngx_thread_pool_t, run: Runner) -> &'static RunQueue {
        let mut queues = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = queues.0.iter().find(|q| q.pool == pool) {
            return q;
        }
        let q: &'static RunQueue = Box::leak(Box::new(RunQueue {
            pool,
            run,
            state: Mutex::new(State::default()),
        }));
        queues.0.push(q);
        q
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` and makes sure a drainer will run it. Err: the queue is full, or nginx refused
    /// the task (it has logged why) before any drainer took the job; the job is not queued.
    ///
    /// # Safety
    /// Event-loop thread; `job` is live until it comes back through [`crate::notify::finished`].
    pub(crate) unsafe fn submit(&'static self, job: *mut Job) -> Result<(), ()> {
        let task = {
            let mut st = self.lock();
            if st.jobs.len() >= MAX_QUEUED {
                return Err(());
            }
            st.jobs.push_back(Queued(job));
            if st.pending > 0 {
                return Ok(());
            }
            st.pending += 1;
            st.idle.pop()
        };
        // SAFETY: event-loop thread, per the function contract.
        if unsafe { self.post(task) } {
            return Ok(());
        }
        let mut st = self.lock();
        st.pending -= 1;
        match st.jobs.iter().rposition(|q| q.0 == job) {
            Some(at) => {
                st.jobs.remove(at);
                Err(())
            }
            // A running drainer took it meanwhile: it is served.
            None => Ok(()),
        }
    }

    /// A drainer asked for a successor: post one if requests still wait and nobody is on its way.
    ///
    /// # Safety
    /// Event-loop thread.
    pub(crate) unsafe fn top_up(&'static self) {
        let task = {
            let mut st = self.lock();
            st.wanted = false;
            if st.pending > 0 || st.jobs.is_empty() {
                return;
            }
            st.pending += 1;
            st.idle.pop()
        };
        // SAFETY: event-loop thread, per the function contract.
        if !unsafe { self.post(task) } {
            // The pool's own queue is full (nginx logged it): the running drainers still empty
            // this queue, only without a spare.
            self.lock().pending -= 1;
        }
    }

    /// Posts `task` (or a new drainer); false if nginx refused it.
    unsafe fn post(&'static self, task: Option<TaskPtr>) -> bool {
        let drainer = match task {
            Some(t) => t.0,
            None => {
                let drainer = Box::into_raw(Box::new(Drainer {
                    // SAFETY: an all-zero task is what `ngx_thread_task_alloc` hands out.
                    task: unsafe { std::mem::zeroed() },
                    queue: self,
                }));
                // SAFETY: the drainer was just allocated and is never freed (reused by the pool).
                unsafe {
                    (*drainer).task.ctx = drainer.cast();
                    (*drainer).task.handler = Some(drain);
                    (*drainer).task.event.handler = Some(drained);
                    (*drainer).task.event.data = drainer.cast();
                }
                drainer
            }
        };
        // SAFETY: the task is idle (new, or its completion handler has run), on the event loop.
        let rc = unsafe { ngx_thread_task_post(self.pool, &mut (*drainer).task) };
        if rc != NGX_OK as ngx_int_t {
            self.lock().idle.push(TaskPtr(drainer));
            return false;
        }
        true
    }

    /// The next job for a drainer that holds the GIL; `first` when the drainer just started.
    /// Also tells whether the loop must post a successor.
    fn next(&self, first: bool) -> (Option<*mut Job>, bool) {
        let mut st = self.lock();
        if first {
            st.pending -= 1;
        }
        let job = st.jobs.pop_front().map(|q| q.0);
        let want = job.is_some() && !st.jobs.is_empty() && st.pending == 0 && !st.wanted;
        if want {
            st.wanted = true;
        }
        (job, want)
    }
}

/// A pool thread: runs queued requests while it holds the GIL.
unsafe extern "C" fn drain(data: *mut c_void, _log: *mut ngx_log_t) {
    // SAFETY: `data` is the task's context, the drainer itself, alive for the process.
    let queue = unsafe { (*(data as *mut Drainer)).queue };
    guard("running the wsgi queue", (), || {
        ngx_wsgi::interpreter::attach(|_py| {
            let mut first = true;
            loop {
                let (job, want) = queue.next(first);
                first = false;
                if want {
                    crate::notify::schedule_lasting(queue);
                }
                let Some(job) = job else { break };
                // SAFETY: the job was queued by the loop and popped by this thread only; it
                // stays alive until the loop has it back.
                unsafe { (queue.run)(job) };
                crate::notify::finished(job.cast());
            }
        })
    });
}

impl Pump for RunQueue {
    /// A drainer asked for a successor.
    unsafe fn pump(&self) {
        // SAFETY: every RunQueue is leaked in `find_or_make`, so it lives for the process; on the
        // event loop, per `pump`'s contract.
        unsafe { (*(self as *const RunQueue)).top_up() }
    }
}

/// The drainer's task is done (event loop): it may be posted again.
unsafe extern "C" fn drained(ev: *mut ngx_event_t) {
    guard("a wsgi drainer finished", (), || {
        // SAFETY: the event's data is its drainer, alive for the process.
        let drainer = unsafe { (*ev).data as *mut Drainer };
        // SAFETY: as above.
        let queue = unsafe { (*drainer).queue };
        queue.lock().idle.push(TaskPtr(drainer));
    })
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
            pool: std::ptr::null_mut(),
            run: never,
            state: Mutex::new(State::default()),
        };
        {
            let mut st = q.lock();
            for i in 0..jobs {
                st.jobs.push_back(Queued(fake(i + 1)));
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
        assert!(!want, "another drainer is already posted");
        assert_eq!(q.lock().pending, 1);
    }

    #[test]
    fn the_last_request_needs_no_successor() {
        let q = queue_with(1, 1);
        assert_eq!(q.next(true), (Some(fake(1)), false));
    }
}
