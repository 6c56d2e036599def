//! Wakes the event loop from Python threads: an eventfd registered with nginx, and the list of
//! work left for it (response output waiting, room for more request body). `ngx_thread_task_post`
//! and nginx's own `ngx_notify` belong to the event loop and the thread-pool module; they must not
//! be used from other threads.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use nginx_sys::{ngx_cycle_t, ngx_event_actions, ngx_event_t, ngx_get_connection, NGX_OK};

use crate::ffi_guard::guard;

/// Work a Python thread leaves for the event loop.
pub(crate) trait Pump: Send + Sync {
    /// Runs on the event loop after `schedule`.
    ///
    /// # Safety
    /// Event-loop thread only.
    unsafe fn pump(&self);
}

static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static READY: Mutex<Vec<Arc<dyn Pump>>> = Mutex::new(Vec::new());

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
    READY.lock().unwrap_or_else(|e| e.into_inner()).push(work);
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
        let ready = std::mem::take(&mut *READY.lock().unwrap_or_else(|e| e.into_inner()));
        for work in ready {
            // SAFETY: on the event loop, which is what `pump` requires.
            unsafe { work.pump() };
        }
    })
}
