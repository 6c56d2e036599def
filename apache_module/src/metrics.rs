//! `SetHandler ngx-wsgi-status`: Prometheus text metrics of all the children together, the same
//! as nginx's `wsgi_status` (the block's layout, the counting and the text are the core's).
//!
//! The parent makes the shared memory (an anonymous mapping every child inherits) when the
//! configuration names the handler, and keeps it in its process pool, which lives across
//! restarts: counts survive `apachectl graceful` and `restart`, and are checked for the layout
//! before they are reused. Without the handler in the configuration, nothing is counted.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use ngx_wsgi::metrics::{block_size, init_block, is_compatible};

use crate::bindings::{
    ap_conftree, ap_directive_t, ap_discard_request_body, ap_set_content_length,
    ap_set_content_type, apr_pool_t, apr_pool_userdata_get, apr_pool_userdata_set,
    apr_shm_baseaddr_get, apr_shm_create, apr_shm_destroy, apr_shm_t, request_rec, server_rec,
    APLOG_ERR, APLOG_NOTICE, APR_SUCCESS, AP_MPMQ_HARD_LIMIT_DAEMONS, HTTP_METHOD_NOT_ALLOWED,
    M_GET, OK,
};
use crate::brigade::Out;
use crate::ffi_guard::guard;

/// The handler's name, for `SetHandler`.
pub(crate) const HANDLER: &[u8] = b"ngx-wsgi-status";

/// Where the parent keeps the mapping across configuration generations.
const KEY: &CStr = c"ngx_wsgi_metrics";

/// The block (set in the parent, inherited by the children; NULL: nothing is counted).
static BLOCK: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

/// Whether this configuration counts (the handler is configured).
pub(crate) fn configured() -> bool {
    !BLOCK.load(Relaxed).is_null()
}

/// Whether a `SetHandler` or `AddHandler` of the configuration names the handler.
///
/// # Safety
/// `d` is NULL or a node of the parsed configuration tree.
unsafe fn names_handler(mut d: *const ap_directive_t) -> bool {
    // SAFETY: per the function contract; the tree's strings are NUL-terminated.
    unsafe {
        while let Some(node) = d.as_ref() {
            let name = crate::request_info::bytes(node.directive);
            let first = crate::request_info::bytes(node.args)
                .split(|c| c.is_ascii_whitespace())
                .find(|w| !w.is_empty())
                .unwrap_or_default();
            let first = first.strip_prefix(b"\"").unwrap_or(first);
            let first = first.strip_suffix(b"\"").unwrap_or(first);
            if (name.eq_ignore_ascii_case(b"SetHandler")
                || name.eq_ignore_ascii_case(b"AddHandler"))
                && first.eq_ignore_ascii_case(HANDLER)
            {
                return true;
            }
            if names_handler(node.first_child) {
                return true;
            }
            d = node.next;
        }
    }
    false
}

/// Gauge entries: every child that can be alive at once, twice over (children that have died
/// but are not reaped yet hold theirs until then).
fn entries() -> usize {
    // The MPM has read its configuration by post_config.
    let limit = crate::mpm::query(AP_MPMQ_HARD_LIMIT_DAEMONS).unwrap_or(0);
    (usize::try_from(limit).unwrap_or(0) * 2).max(16)
}

pub(crate) unsafe extern "C" fn post_config(
    _pconf: *mut apr_pool_t,
    _plog: *mut apr_pool_t,
    _ptemp: *mut apr_pool_t,
    s: *mut server_rec,
) -> c_int {
    guard("post_config", OK as c_int, || {
        BLOCK.store(std::ptr::null_mut(), Relaxed);
        // SAFETY: the configuration tree of the generation being started is live.
        if !unsafe { names_handler(ap_conftree) } {
            return OK as c_int;
        }
        // SAFETY: the server's process pool lives as long as the parent; the shared memory kept
        // there is this module's (its key), made by an earlier generation of this function.
        unsafe {
            let pool = (*(*s).process).pool;
            let entries = entries();
            let mut kept: *mut c_void = std::ptr::null_mut();
            apr_pool_userdata_get(&mut kept, KEY.as_ptr(), pool);
            let kept = kept as *mut apr_shm_t;
            if !kept.is_null() {
                let block = apr_shm_baseaddr_get(kept) as *mut u8;
                if is_compatible(block, entries) {
                    BLOCK.store(block, Relaxed);
                    return OK as c_int;
                }
                // Children of the previous generation keep their own mapping until they exit.
                crate::log::write(
                    APLOG_NOTICE as c_int,
                    "wsgi: the metrics were kept by another module version or ServerLimit; counting starts from zero",
                );
                apr_shm_destroy(kept);
            }
            let mut shm: *mut apr_shm_t = std::ptr::null_mut();
            let rv = apr_shm_create(&mut shm, block_size(entries), std::ptr::null(), pool);
            if rv != APR_SUCCESS as i32 || shm.is_null() {
                crate::log::write(
                    APLOG_ERR as c_int,
                    &format!("wsgi: no shared memory for the metrics (APR error {rv}); nothing is counted"),
                );
                apr_pool_userdata_set(std::ptr::null(), KEY.as_ptr(), None, pool);
                return OK as c_int;
            }
            let block = apr_shm_baseaddr_get(shm) as *mut u8;
            init_block(block, entries);
            apr_pool_userdata_set(shm as *const c_void, KEY.as_ptr(), None, pool);
            BLOCK.store(block, Relaxed);
        }
        OK as c_int
    })
}

/// Makes this child count (from `child_init`).
pub(crate) fn child_init() {
    let block = BLOCK.load(Relaxed);
    if block.is_null() {
        return;
    }
    // SAFETY: the parent made the block before forking; the mapping lives as long as the child.
    if let Err(e) = unsafe { ngx_wsgi::metrics::attach(block, None) } {
        crate::log::write(APLOG_ERR as c_int, &format!("wsgi: metrics: {e}"));
    }
}

/// Answers a request for the metrics.
///
/// # Safety
/// `r` is a live request on the calling thread, inside its handler.
pub(crate) unsafe fn handle(r: *mut request_rec) -> c_int {
    // SAFETY: per the function contract.
    unsafe {
        (*r).allowed |= 1 << M_GET;
        if (*r).method_number != M_GET as c_int {
            return HTTP_METHOD_NOT_ALLOWED as c_int;
        }
        let rc = ap_discard_request_body(r);
        if rc != OK as c_int {
            return rc;
        }
        let block = BLOCK.load(Relaxed);
        let body = if block.is_null() {
            String::new()
        } else {
            ngx_wsgi::metrics::render(&*block.cast::<ngx_wsgi::metrics::Block>())
        };
        let content_type = ngx_wsgi::metrics::CONTENT_TYPE.as_bytes();
        ap_set_content_type(r, crate::client_io::pool_str(r, content_type));
        ap_set_content_length(r, body.len() as i64);
        let out = Out::new(r);
        out.data(body.as_bytes());
        out.eos();
        out.pass();
        OK as c_int
    }
}
