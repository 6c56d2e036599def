//! A pool whose every thread is held by requests past their deadline (`wsgi_read_timeout`) in
//! calls that do not return (a socket read or a lock without a timeout: C code, where their
//! `TimeoutError` waits to land), or whose queued requests start no more while one is so held
//! (its call keeps the GIL): the worker can run none of that pool's requests any more, and
//! nothing else would ever give the threads back. Once that has lasted as long as a stall of the
//! ASGI event loop may ([`crate::asgi_queue::stuck_after`]), the worker is recycled, as
//! gunicorn's timeout, uWSGI's harakiri and mod_wsgi's request-timeout replace theirs.

use nginx_sys::ngx_msec_t;

use crate::dispatch::RunQueue;

/// Whether `queue`'s pool has been stuck for too long ([`RunQueue::stuck_for`]); then the worker
/// is recycled (once).
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn recycle_if_stuck(queue: &RunQueue, queue_timeout: ngx_msec_t) -> bool {
    // SAFETY: per the function contract.
    let Some(stuck_for) = (unsafe { queue.stuck_for() }) else {
        return false;
    };
    if stuck_for <= crate::asgi_queue::stuck_after(queue_timeout) {
        return false;
    }
    crate::recycle::pool_stuck(stuck_for, queue.capacity());
    true
}
