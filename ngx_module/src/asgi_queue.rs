//! Overload bounds for ASGI requests. The event loop runs every ASGI task of the worker on one
//! thread and has no pool to grow: a request waits when the loop is busy, or blocked by an app
//! that does not await (`time.sleep` in async code). What waits is what was handed to the loop
//! and whose app it has not started yet; `wsgi_max_queue` and `wsgi_queue_timeout` bound that,
//! as they bound WSGI's wait for a thread. A request that finds the queue full, or its oldest
//! entry waiting longer than the timeout, is refused at once; one that has waited that long is
//! taken back from the loop (it never runs) by a sweeper and answered 503.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use nginx_sys::{ngx_current_msec, ngx_event_t, ngx_msec_t};
use ngx_wsgi::asgi::AsgiLoop;

use crate::asgi_request::AsgiRequest;
use crate::dispatch::{sweep_interval, QueueLimits, Refused};
use crate::ffi::guard;
use crate::ffi::timer::WorkerTimer;

/// What the request flow does with a request that waited too long (the loop gave it up).
pub(crate) type Expired = unsafe fn(&Arc<AsgiRequest>);

struct Waiting {
    /// Weak: a request that ended is not kept (nor its response's file) for the sweeper.
    request: Weak<AsgiRequest>,
    /// nginx's clock when it was handed to the loop.
    at: ngx_msec_t,
    expired: Expired,
}

struct Queue {
    /// HTTP requests handed to the loop, oldest first; those the loop started are dropped as
    /// they are met. (WebSocket handshakes count in the loop's queue but the sweeper does not
    /// take them back: theirs is a connection that outlives the request. Only their client's
    /// going does.)
    waiting: VecDeque<Waiting>,
    limits: QueueLimits,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    waiting: VecDeque::new(),
    limits: QueueLimits {
        max_queue: 0,
        queue_timeout: 0,
    },
});

static SWEEPER: WorkerTimer = WorkerTimer::new();

fn queue() -> MutexGuard<'static, Queue> {
    QUEUE.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    /// Drops the entries the loop has started (or that were answered otherwise) from the front.
    fn prune(&mut self) {
        while self
            .waiting
            .front()
            .is_some_and(|w| w.request.upgrade().is_none_or(|r| !r.watch.queued()))
        {
            self.waiting.pop_front();
        }
    }
}

/// Whether one more request may be handed to `event_loop` (none waits past the bounds).
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn admit(event_loop: &AsgiLoop, limits: QueueLimits) -> Result<(), Refused> {
    if event_loop.died() {
        crate::recycle::loop_died();
        return Err(Refused::LoopDied);
    }
    if recycle_if_stuck(event_loop, limits.queue_timeout) {
        return Err(Refused::LoopStalled);
    }
    if event_loop.queued() >= limits.max_queue {
        return Err(Refused::LoopFull);
    }
    // SAFETY: plain read of nginx's cached clock on the event loop.
    let now = unsafe { ngx_current_msec };
    let mut q = queue();
    q.prune();
    if q.waiting
        .front()
        .is_some_and(|w| now.saturating_sub(w.at) > limits.queue_timeout)
    {
        return Err(Refused::LoopStalled);
    }
    Ok(())
}

/// How long the loop may leave its work untaken before the stall is one the worker cannot wait
/// out: three times `wsgi_queue_timeout` (the requests of two have been refused meanwhile), and
/// never less than 5 s, so that a short timeout does not make a long computation fatal.
pub(crate) fn stuck_after(queue_timeout: ngx_msec_t) -> ngx_msec_t {
    queue_timeout.saturating_mul(3).max(5000)
}

/// Whether the loop has left its work untaken past [`stuck_after`]: an app keeps its thread in
/// a call that does not return (a lock or a socket read without a timeout, in async code). No
/// request it holds can end, and none it is given will start.
pub(crate) fn loop_stuck(event_loop: &AsgiLoop, queue_timeout: ngx_msec_t) -> bool {
    event_loop.unserved_for().as_millis() > stuck_after(queue_timeout) as u128
}

/// [`loop_stuck`] with this worker's `wsgi_queue_timeout`.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn this_loop_stuck() -> bool {
    let Some(event_loop) = ngx_wsgi::asgi::event_loop::get() else {
        return false;
    };
    // SAFETY: the cycle lives as long as the worker; on the event loop.
    let timeout = crate::conf::cycle_main_conf(unsafe { &*nginx_sys::ngx_cycle })
        .map_or(crate::conf::limits::DEFAULT_QUEUE_TIMEOUT_MS, |mc| {
            mc.limits.queue_timeout()
        });
    loop_stuck(event_loop, timeout)
}

/// A stuck loop is never waited out: the worker is recycled (the error log has already said
/// where the loop's thread is, with the first request it refused).
fn recycle_if_stuck(event_loop: &AsgiLoop, queue_timeout: ngx_msec_t) -> bool {
    if !loop_stuck(event_loop, queue_timeout) {
        return false;
    }
    crate::recycle::loop_stuck(event_loop.unserved_for());
    true
}

/// Remembers an HTTP request just handed to the loop, for the sweeper.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn waiting(request: &Arc<AsgiRequest>, limits: QueueLimits, expired: Expired) {
    // SAFETY: plain read of nginx's cached clock on the event loop.
    let at = unsafe { ngx_current_msec };
    {
        let mut q = queue();
        q.limits = limits;
        q.waiting.push_back(Waiting {
            request: Arc::downgrade(request),
            at,
            expired,
        });
    }
    // SAFETY: on the event loop; the sweeper is a static.
    unsafe {
        crate::ffi::timer::keep_armed(
            SWEEPER.event(),
            Some(sweep),
            std::ptr::null_mut(),
            sweep_interval(limits.queue_timeout),
        )
    }
}

/// The sweeper's timer: answers the requests that waited too long for the loop, and all of
/// them once the loop is stuck.
unsafe extern "C" fn sweep(ev: *mut ngx_event_t) {
    guard("the asgi queue sweeper", (), || {
        let timeout = queue().limits.queue_timeout;
        let stuck = ngx_wsgi::asgi::event_loop::get()
            .is_some_and(|event_loop| recycle_if_stuck(event_loop, timeout));
        // SAFETY: on the event loop.
        if unsafe { expire(stuck) } {
            // SAFETY: the event is the static sweeper, on the event loop.
            unsafe { nginx_sys::ngx_add_timer(ev, sweep_interval(timeout)) };
        }
    })
}

/// The loop is stuck: every request still waiting for it is answered (503) now, where the
/// worker's exit would cut it.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn give_up_all() {
    // SAFETY: per the function contract.
    unsafe { expire(true) };
}

/// Answers the waiting requests past `wsgi_queue_timeout` (`all`: every one); whether any
/// still waits.
///
/// # Safety
/// Event-loop thread.
unsafe fn expire(all: bool) -> bool {
    // SAFETY: plain read of nginx's cached clock on the event loop.
    let now = unsafe { ngx_current_msec };
    let (expired, more) = {
        let mut q = queue();
        let timeout = q.limits.queue_timeout;
        let mut expired = Vec::new();
        loop {
            q.prune();
            match q.waiting.front() {
                Some(w) if all || now.saturating_sub(w.at) > timeout => {
                    expired.extend(q.waiting.pop_front());
                }
                _ => break,
            }
        }
        (expired, !q.waiting.is_empty())
    };
    for w in expired {
        if let Some(request) = w.request.upgrade() {
            // SAFETY: on the event loop; the request is live while it waits (blocked).
            unsafe { (w.expired)(&request) };
        }
    }
    more
}
