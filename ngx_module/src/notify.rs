//! Wakes the event loop from Python threads: an eventfd registered with nginx, and the lists of
//! work left for it (finished requests, drainers wanted, response output waiting, room for more
//! request body). The eventfd is written only when the lists were empty, so a busy loop is woken
//! once per batch, not once per item. `ngx_thread_task_post` and nginx's own `ngx_notify`
//! belong to the event loop and the thread-pool module; they must not be used from other threads.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use nginx_sys::{ngx_cycle_t, ngx_event_actions, ngx_event_t, ngx_get_connection, NGX_OK};

use crate::dispatch::RunQueue;
use crate::ffi_guard::guard;
use crate::handler::Job;

/// Work a Python thread leaves for the event loop.
pub(crate) trait Pump: Send + Sync {
    /// Runs on the event loop after `schedule`.
    ///
    /// # Safety
    /// Event-loop thread only.
    unsafe fn pump(&self);
}

static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static WORK: Mutex<Work> = Mutex::new(Work::new());

thread_local! {
    static SPARE: std::cell::Cell<Work> = const { std::cell::Cell::new(Work::new()) };
}

struct Work {
    pumps: Vec<Arc<dyn Pump>>,
    finished: Vec<JobPtr>,
    drainers: Vec<&'static RunQueue>,
}

impl Default for Work {
    fn default() -> Self {
        Work::new()
    }
}

impl Work {
    const fn new() -> Self {
        Work {
            pumps: Vec::new(),
            finished: Vec::new(),
            drainers: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.pumps.is_empty() && self.finished.is_empty() && self.drainers.is_empty()
    }
}

struct JobPtr(*mut Job);
// SAFETY: a finished job is handed to the loop and touched by no other thread afterwards.
unsafe impl Send for JobPtr {}

/// `NGX_READ_EVENT` of Linux builds (a preprocessor macro bindgen cannot see).
const READ_EVENT: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;

/// Creates the worker's eventfd and registers it with the event loop.
///
/// # Safety
/// Called once per worker from `init_process`, on the event-loop thread.
pub(crate) unsafe fn init(cycle: *mut ngx_cycle_t) -> Result<(), String> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd(): {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the cycle is live; the connection takes the descriptor for the worker's life.
    unsafe {
        let c = ngx_get_connection(fd, (*cycle).log);
        if c.is_null() {
            libc::close(fd);
            return Err("no free connection for the wsgi notifier".into());
        }
        let rev = (*c).read;
        (*rev).handler = Some(on_ready);
        (*rev).log = (*cycle).log;
        // Like nginx's own channel: not a client connection, never "left open" at exit.
        (*rev).set_channel(1);
        let add = ngx_event_actions
            .add
            .ok_or("the event module has no add()")?;
        if add(rev, READ_EVENT as _, 0) != NGX_OK as isize {
            return Err("cannot register the wsgi notifier with the event loop".into());
        }
    }
    EVENT_FD.store(fd, Ordering::Release);
    Ok(())
}

/// Queues `work` for the event loop and wakes it (any thread).
pub(crate) fn schedule(work: Arc<dyn Pump>) {
    add(|w| w.pumps.push(work));
}

/// A pool thread is done with `job`: the loop sends its response.
pub(crate) fn finished(job: *mut Job) {
    add(|w| w.finished.push(JobPtr(job)));
}

/// A drainer of `queue` wants a successor posted.
pub(crate) fn want_drainer(queue: &'static RunQueue) {
    add(|w| w.drainers.push(queue));
}

fn add(put: impl FnOnce(&mut Work)) {
    let wake = {
        let mut work = WORK.lock().unwrap_or_else(|e| e.into_inner());
        let wake = work.is_empty();
        put(&mut work);
        wake
    };
    if !wake {
        // The loop has not taken the earlier items yet: it is already woken for them.
        return;
    }
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to the eventfd; a full counter (EAGAIN) still
    // leaves the loop woken, which is all that is needed.
    unsafe {
        libc::write(
            EVENT_FD.load(Ordering::Acquire),
            (&one as *const u64).cast(),
            8,
        )
    };
}

unsafe extern "C" fn on_ready(_ev: *mut ngx_event_t) {
    guard("the wsgi notifier", (), || {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 (resets the eventfd counter).
        unsafe {
            libc::read(
                EVENT_FD.load(Ordering::Acquire),
                (&mut count as *mut u64).cast(),
                8,
            )
        };
        // The loop's own lists, swapped with the shared ones: no allocation per wake-up.
        let mut work = SPARE.with(|spare| spare.take());
        std::mem::swap(
            &mut work,
            &mut *WORK.lock().unwrap_or_else(|e| e.into_inner()),
        );
        for queue in work.drainers.drain(..) {
            // SAFETY: on the event loop, which is what `top_up` requires.
            unsafe { queue.top_up() };
        }
        for pump in work.pumps.drain(..) {
            // SAFETY: on the event loop, which is what `pump` requires.
            unsafe { pump.pump() };
        }
        for job in work.finished.drain(..) {
            // SAFETY: on the event loop; the pool thread is done with the job.
            unsafe { crate::handler::complete(job.0) };
        }
        SPARE.with(|spare| spare.set(work));
    })
}
