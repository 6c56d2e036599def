//! The module's response header filter, on top of nginx's: it decides whether a response's
//! head may promise keep-alive, for what nginx does not know when the head goes out.
//! - A worker that drains before its exit (`exit_drain.rs`): every response closes its
//!   connection, whichever location answers.
//! - A response of an app's location while the request body still arrives
//!   (`wsgi_request_buffering off`, the app answering before it read it all, or nginx's own
//!   500, 503 or 504 for it): nginx closes the connection after it (a lingering close, which
//!   discards what follows), so a head that promised keep-alive would have the client send its
//!   next request into a closing connection.

use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use nginx_sys::{ngx_http_request_t, ngx_int_t, NGX_ERROR};

use crate::ffi::guard;

type HeaderFilter = unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t;

/// The header filter below [`header_filter`].
static NEXT_HEADER_FILTER: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// Puts [`header_filter`] on top of nginx's response header filters.
///
/// # Safety
/// In `postconfiguration`, after nginx's core module has set up the chain.
pub(crate) unsafe fn install() {
    // SAFETY: per the function contract: configuration time, one thread.
    unsafe {
        let next = nginx_sys::ngx_http_top_header_filter;
        NEXT_HEADER_FILTER.store(next.map_or(std::ptr::null_mut(), |f| f as *mut ()), Relaxed);
        nginx_sys::ngx_http_top_header_filter = Some(header_filter);
    }
}

unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard("the response header filter", NGX_ERROR as ngx_int_t, || {
        let next = NEXT_HEADER_FILTER.load(Relaxed);
        if next.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        // SAFETY: `next` was stored from a `HeaderFilter` (a function pointer round-trips
        // through `*mut ()`); nginx passes the live request on the event loop.
        unsafe {
            if r == (*r).main
                && (*r).keepalive() != 0
                && (closes_after(&*r) || crate::busy_handoff::closes_a_connection(&*r))
            {
                (*r).set_keepalive(0);
            }
            let next: HeaderFilter = std::mem::transmute(next);
            next(r)
        }
    })
}

/// Whether nginx closes `r`'s connection after this response (its main request's).
fn closes_after(r: &ngx_http_request_t) -> bool {
    if crate::exit_drain::ending() {
        return true;
    }
    r.reading_body() != 0
        && crate::conf::loc_conf(r).is_some_and(|lc| lc.app.index.is_some() || lc.status)
}
