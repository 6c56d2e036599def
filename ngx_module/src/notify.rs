//! Wakes the event loop from other threads: an eventfd registered with nginx, and the lists of
//! work left for it (requests back from Python, output waiting, room for more request body,
//! log entries). The eventfd is written only when the lists were empty, so a busy loop is woken
//! once per batch, not once per item; under load, the asyncio thread's write waits for the end
//! of its loop's round (the core's `held_wakes`), unless another thread queues work meanwhile.
//! `ngx_thread_task_post` and nginx's own
//! `ngx_notify` belong to the event loop and the thread-pool module; they must not be used from
//! other threads.
//!
//! What the loop does with each item is given to it, not known here: [`Pump`] objects say it
//! themselves, and finished items go to the callback given to [`init`].

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use nginx_sys::{ngx_cycle_t, ngx_event_actions, ngx_event_t, ngx_get_connection, NGX_OK};

use crate::ffi::event_flags::READ_EVENT;
use crate::ffi::guard;

/// Work another thread leaves for the event loop.
pub(crate) trait Pump: Send + Sync {
    /// Runs on the event loop after it was scheduled.
    ///
    /// # Safety
    /// Event-loop thread only.
    unsafe fn pump(&self);
}

static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static WORK: Mutex<Work> = Mutex::new(Work::new());
/// What the loop does with a finished item (set once, by `init`).
static ON_FINISHED: OnceLock<unsafe fn(*mut c_void)> = OnceLock::new();

thread_local! {
    static SPARE: std::cell::Cell<Work> = const { std::cell::Cell::new(Work::new()) };
}

struct Work {
    pumps: Vec<Arc<dyn Pump>>,
    /// Pumps that live for the process (a thread pool's queue).
    lasting: Vec<&'static dyn Pump>,
    finished: Vec<Finished>,
    log: bool,
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
            lasting: Vec::new(),
            finished: Vec::new(),
            log: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.pumps.is_empty() && self.lasting.is_empty() && self.finished.is_empty() && !self.log
    }
}

struct Finished(*mut c_void);
// SAFETY: a finished item is handed to the loop and touched by no other thread afterwards.
unsafe impl Send for Finished {}

/// Creates the worker's eventfd and registers it with the event loop; `on_finished` is what the
/// loop does with each item passed to [`finished`].
///
/// # Safety
/// Called once per worker from `init_process`, on the event-loop thread.
pub(crate) unsafe fn init(
    cycle: *mut ngx_cycle_t,
    on_finished: unsafe fn(*mut c_void),
) -> Result<(), String> {
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
    let _ = ON_FINISHED.set(on_finished);
    EVENT_FD.store(fd, Ordering::Release);
    ngx_wsgi::asgi::held_wakes::set_wake(write_wake);
    crate::ffi::log::set_waker(|| add(|w| w.log = true));
    Ok(())
}

/// The worker's eventfd (-1 before [`init`]).
pub(crate) fn event_fd() -> libc::c_int {
    EVENT_FD.load(Ordering::Acquire)
}

/// Queues `work` for the event loop and wakes it (any thread).
pub(crate) fn schedule(work: Arc<dyn Pump>) {
    add(|w| w.pumps.push(work));
}

/// Queues a pump that lives for the process (any thread).
pub(crate) fn schedule_lasting(work: &'static dyn Pump) {
    add(|w| w.lasting.push(work));
}

/// Hands `item` back to the event loop, which passes it to the `on_finished` of [`init`].
pub(crate) fn finished(item: *mut c_void) {
    add(|w| w.finished.push(Finished(item)));
}

fn add(put: impl FnOnce(&mut Work)) {
    let wake = {
        let mut work = WORK.lock().unwrap_or_else(|e| e.into_inner());
        let wake = work.is_empty();
        put(&mut work);
        wake
    };
    if !wake {
        // The loop has not taken the earlier items yet: it is already woken for them, unless
        // that wake-up is held for the asyncio loop's round, which this item must not wait for.
        ngx_wsgi::asgi::held_wakes::other_thread_queued();
        return;
    }
    // On the asgi event loop's thread the wake-up waits for the end of its round, with the
    // other responses the round finishes.
    if !ngx_wsgi::asgi::held_wakes::hold() {
        write_wake();
    }
}

fn write_wake() {
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
        // Each item under its own guard, the log's too: a failure in one leaves the others of
        // the batch to run (a request whose completion is dropped would wait for ever).
        if std::mem::take(&mut work.log) {
            // SAFETY: on the event loop.
            guard("the deferred log lines", (), || unsafe {
                crate::ffi::log::flush_deferred()
            });
        }
        for pump in work.lasting.drain(..) {
            // SAFETY: on the event loop, which is what `pump` requires.
            guard("a wsgi notification", (), || unsafe { pump.pump() });
        }
        for pump in work.pumps.drain(..) {
            // SAFETY: on the event loop, which is what `pump` requires.
            guard("a wsgi notification", (), || unsafe { pump.pump() });
        }
        if let Some(on_finished) = ON_FINISHED.get() {
            for item in work.finished.drain(..) {
                // SAFETY: on the event loop; the other thread is done with the item.
                guard("a finished wsgi request", (), || unsafe {
                    on_finished(item.0)
                });
            }
        }
        SPARE.with(|spare| spare.set(work));
    })
}
