//! `wsgi_status`: Prometheus text metrics of all the workers together, kept in a shared memory
//! zone (`wsgi_status`) that the workers update with atomic operations. The zone only exists
//! when some location has `wsgi_status`; without it, nothing is counted. The block's layout,
//! the counting and the text are the core's (`ngx_wsgi::metrics`), shared with the Apache module.

use std::ffi::c_void;

use nginx_sys::{
    ngx_int_t, ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t, NGX_ERROR, NGX_LOG_ALERT,
    NGX_LOG_NOTICE, NGX_OK,
};
use ngx_wsgi::metrics::{block_size, init_block, is_compatible};

use crate::ffi::guard;

// The block's layout, the counting and the text are the core's, shared with the Apache module.
pub(crate) use ngx_wsgi::metrics::{
    asgi_timed_out, dequeued_unrun, finished, finished_outcome, pool_thread, posted, recycled,
    refused, render, thread_finished, thread_started, timed_out, unposted, websocket,
    Block as Metrics,
};

/// Gauge entries: one per nginx process slot.
const SLOTS: usize = nginx_sys::NGX_MAX_PROCESSES as usize;

/// Bytes of the `wsgi_status` zone: room for two blocks (a reload onto a module version with
/// another layout starts a new one while the old workers still count into theirs) and for the
/// slab allocator's own pages.
pub(crate) const ZONE_SIZE: usize = (2 * block_size(SLOTS) + 64 * 1024).next_multiple_of(4096);

/// Makes this worker count into the zone, if there is one (from `init_process`).
pub(crate) fn attach(zone: *mut ngx_shm_zone_t) {
    if zone.is_null() {
        return;
    }
    // SAFETY: the zone's init callback ran in the master before the worker was forked; the
    // process slot is set before init_process; the zone stays mapped for the worker's life.
    let attached = unsafe {
        let slot = nginx_sys::ngx_process_slot.max(0) as usize;
        ngx_wsgi::metrics::attach((*zone).data.cast(), Some(slot))
    };
    if let Err(e) = attached {
        crate::ffi::log::cycle_log(NGX_LOG_ALERT as usize, &format!("wsgi_status: {e}"));
    }
}

/// The zone's init callback (in the master, at each configuration load): the counters of the
/// previous cycle are kept when their layout is this module's.
pub(crate) unsafe extern "C" fn init_zone(
    zone: *mut ngx_shm_zone_t,
    old: *mut c_void,
) -> ngx_int_t {
    guard("the wsgi_status zone", NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx passes the zone; `old` is the previous cycle's block in the same memory.
        unsafe {
            let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
            let previous = if old.is_null() && (*zone).shm.exists != 0 {
                (*pool).data
            } else {
                old
            };
            if !previous.is_null() {
                if is_compatible(previous.cast(), SLOTS) {
                    (*zone).data = previous;
                    return NGX_OK as ngx_int_t;
                }
                // Workers of the previous cycle (another module version) keep counting into the
                // old block until they exit: it is left alone, and counting starts anew.
                crate::ffi::log::cycle_log(
                    NGX_LOG_NOTICE as usize,
                    "wsgi_status: the zone holds metrics of another module version; counting starts from zero",
                );
            }
            let block = ngx_slab_alloc(pool, block_size(SLOTS));
            if block.is_null() {
                crate::ffi::log::cycle_log(
                    NGX_LOG_ALERT as usize,
                    "wsgi_status: no room in the zone for the metrics; restart nginx to reset it",
                );
                return NGX_ERROR as ngx_int_t;
            }
            init_block(block.cast(), SLOTS);
            (*pool).data = block;
            (*zone).data = block;
        }
        NGX_OK as ngx_int_t
    })
}

/// The counters of `zone`, if it has been initialised.
///
/// # Safety
/// `zone` is NULL or the live `wsgi_status` zone.
pub(crate) unsafe fn of_zone<'a>(zone: *mut ngx_shm_zone_t) -> Option<&'a Metrics> {
    // SAFETY: per the function contract; the zone's data is its Metrics block once initialised.
    unsafe {
        if zone.is_null() {
            return None;
        }
        ((*zone).data as *const Metrics).as_ref()
    }
}
