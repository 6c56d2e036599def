//! Timers on events the module owns (a request's deadline, a queue's sweeper): arming and
//! disarming them.

use std::cell::UnsafeCell;
use std::ffi::c_void;

use nginx_sys::{
    ngx_add_timer, ngx_del_timer, ngx_event_handler_pt, ngx_event_t, ngx_event_timer_rbtree,
    ngx_log_t, ngx_msec_t, ngx_rbtree_next,
};

/// Arms `ev` to call `handler` with `data` after `ms` (nothing for 0).
///
/// # Safety
/// Event-loop thread; `ev` stays at its address until it fired or [`disarm`] ran.
pub(crate) unsafe fn arm(
    ev: &mut ngx_event_t,
    handler: ngx_event_handler_pt,
    data: *mut c_void,
    log: *mut ngx_log_t,
    ms: ngx_msec_t,
) {
    if ms == 0 {
        return;
    }
    ev.handler = handler;
    ev.data = data;
    ev.log = log;
    // SAFETY: per the function contract.
    unsafe { ngx_add_timer(ev, ms) };
}

/// Cancels `ev`'s timer if it is set.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn disarm(ev: &mut ngx_event_t) {
    if ev.timer_set() != 0 {
        // SAFETY: per the function contract; the timer is in nginx's tree.
        unsafe { ngx_del_timer(ev) };
    }
}

/// Arms `ev` to call `handler` with `data` after `ms`, unless its timer is already set; the timer
/// is cancelable: it does not keep an exiting worker alive by itself (in-flight requests do).
/// For sweepers that stay armed while anything waits.
///
/// # Safety
/// Event-loop thread; `ev` stays at its address for the process.
pub(crate) unsafe fn keep_armed(
    ev: &mut ngx_event_t,
    handler: ngx_event_handler_pt,
    data: *mut c_void,
    ms: ngx_msec_t,
) {
    if ev.timer_set() != 0 {
        return;
    }
    ev.set_cancelable(1);
    // SAFETY: per the function contract; nginx's cycle (and its log) outlives every timer.
    unsafe { arm(ev, handler, data, (*nginx_sys::ngx_cycle).log, ms) };
}

/// Calls `f` with the event of each timer set, in order, until it returns false.
///
/// # Safety
/// Event-loop thread; `f` may change an event's flags, not the timer tree.
unsafe fn each_timer(mut f: impl FnMut(*mut ngx_event_t) -> bool) {
    // SAFETY: per the function contract, nginx's timer tree is this thread's, and each of its
    // nodes is the `timer` field of a live event.
    unsafe {
        let tree = std::ptr::addr_of_mut!(ngx_event_timer_rbtree);
        let sentinel = (*tree).sentinel;
        let mut node = (*tree).root;
        if node == sentinel {
            return;
        }
        while (*node).left != sentinel {
            node = (*node).left;
        }
        while !node.is_null() {
            let ev = node
                .byte_sub(std::mem::offset_of!(ngx_event_t, timer))
                .cast::<ngx_event_t>();
            if !f(ev) {
                return;
            }
            node = ngx_rbtree_next(tree, node);
        }
    }
}

/// Whether `ev`'s handler is one of `handlers`.
///
/// # Safety
/// `ev` is a live event.
pub(crate) unsafe fn handled_by(
    ev: *mut ngx_event_t,
    handlers: &[unsafe extern "C" fn(*mut ngx_event_t)],
) -> bool {
    // SAFETY: per the function contract.
    unsafe { (*ev).handler }.is_some_and(|h| handlers.iter().any(|&f| std::ptr::fn_addr_eq(f, h)))
}

/// Makes the timers set on events whose handler is one of `handlers` cancelable: an exiting
/// worker no longer waits for them (nginx's exit waits for every other timer). How many.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn let_exit_pass(handlers: &[unsafe extern "C" fn(*mut ngx_event_t)]) -> usize {
    let mut count = 0;
    // SAFETY: per the function contract; each event is a live one of the timer tree.
    unsafe {
        each_timer(|ev| {
            if handled_by(ev, handlers) {
                (*ev).set_cancelable(1);
                count += 1;
            }
            true
        })
    };
    count
}

/// Whether a timer that an exiting worker waits for (one not cancelable) is set on an event
/// that `skip` does not take: nginx's exit waits for it, as for a connection still sending or
/// receiving.
///
/// # Safety
/// Event-loop thread; `skip` gets live events.
pub(crate) unsafe fn others_hold_the_exit(skip: impl Fn(*mut ngx_event_t) -> bool) -> bool {
    let mut found = false;
    // SAFETY: per the function contract; each event is a live one of the timer tree.
    unsafe {
        each_timer(|ev| {
            found = (*ev).cancelable() == 0 && !skip(ev);
            !found
        })
    };
    found
}

/// The event of a timer the worker itself owns (not a request's): a sweeper, a drain, a
/// deferred log entry. It lives in a static, so it never moves.
pub(crate) struct WorkerTimer(UnsafeCell<ngx_event_t>);

// SAFETY: the only accessor is an unsafe function whose contract is "event-loop thread only".
unsafe impl Sync for WorkerTimer {}

impl WorkerTimer {
    pub(crate) const fn new() -> Self {
        // SAFETY: an all-zero ngx_event_t is nginx's own initial state for an event.
        WorkerTimer(UnsafeCell::new(unsafe { std::mem::zeroed() }))
    }

    /// # Safety
    /// Event-loop thread, and no other reference to the event is live.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn event(&self) -> &mut ngx_event_t {
        // SAFETY: per the function contract, this is the only reference.
        unsafe { &mut *self.0.get() }
    }
}
