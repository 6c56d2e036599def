//! `wsgi_status`: Prometheus text metrics of all the workers together, kept in a shared memory
//! zone (`wsgi_status`) that the workers update with atomic operations. The zone only exists
//! when some location has `wsgi_status`; without it, nothing is counted. The block's layout,
//! the counting and the text are the core's (`ngx_wsgi::metrics`), shared with the Apache module.

use std::ffi::{c_char, c_void};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_discard_request_body, ngx_http_request_t, ngx_int_t,
    ngx_shared_memory_add, ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t, NGX_ERROR,
    NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED,
    NGX_LOG_ALERT, NGX_LOG_NOTICE, NGX_OK,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::HttpModuleConfExt;
use ngx_wsgi::metrics::{block_size, init_block, is_compatible};

use crate::config::MainConf;
use crate::ffi_guard::guard;
use crate::module;

// The counting itself is the core's, shared with the Apache module.
pub(crate) use ngx_wsgi::metrics::{
    finished, posted, recycled, status_of, thread_finished, thread_started, timed_out,
};

/// Gauge entries: one per nginx process slot.
const SLOTS: usize = nginx_sys::NGX_MAX_PROCESSES as usize;

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
        crate::log::cycle_log(NGX_LOG_ALERT as usize, &format!("wsgi_status: {e}"));
    }
}

unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
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
                crate::log::cycle_log(
                    NGX_LOG_NOTICE as usize,
                    "wsgi_status: the zone holds metrics of another module version; counting starts from zero",
                );
            }
            let block = ngx_slab_alloc(pool, block_size(SLOTS));
            if block.is_null() {
                crate::log::cycle_log(
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

/// `wsgi_status;`: this location answers with the metrics (and the zone comes to exist).
pub(crate) unsafe extern "C" fn set_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_status", NGX_CONF_ERROR, || {
        // SAFETY: inside a location of an http block; the zone name is copied by nginx.
        unsafe {
            let mc = crate::config::main_conf(cf);
            if mc.status_zone.is_null() {
                let mut name = ngx::ngx_string!("wsgi_status");
                let zone = ngx_shared_memory_add(
                    cf,
                    &mut name,
                    // Room for a second block: a reload with a module of another layout.
                    (2 * block_size(SLOTS) + 64 * 1024).next_multiple_of(4096),
                    module() as *const _ as *mut c_void,
                );
                if zone.is_null() {
                    return NGX_CONF_ERROR;
                }
                (*zone).init = Some(init_zone);
                mc.status_zone = zone;
            }
            let clcf = crate::config::core_loc_conf(cf);
            clcf.handler = Some(status_handler);
        }
        NGX_CONF_OK
    })
}

unsafe extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard(
        "the wsgi_status handler",
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        || {
            // SAFETY: nginx passes a live request on the event loop.
            unsafe {
                if (*r).method != NGX_HTTP_GET as usize && (*r).method != NGX_HTTP_HEAD as usize {
                    return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
                }
                let rc = ngx_http_discard_request_body(r);
                if rc != NGX_OK as ngx_int_t {
                    return rc;
                }
                let mc = (*r)
                    .http_main_conf_unchecked::<MainConf>(module())
                    .map(|m| m.as_ref());
                let zone = mc.map_or(std::ptr::null_mut(), |m| m.status_zone);
                let body = if zone.is_null() || (*zone).data.is_null() {
                    String::new()
                } else {
                    ngx_wsgi::metrics::render((*zone).data.cast())
                };
                let body = crate::response::pool_copy(r, body.as_bytes());
                let Some(body) = body else {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
                };
                crate::response::send_static(r, ngx_wsgi::metrics::CONTENT_TYPE.as_bytes(), body)
            }
        },
    )
}
