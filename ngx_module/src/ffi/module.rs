//! The module's handle (its `ngx_module_t`, for configuration and context look-ups) and the
//! small conversions every layer needs.

use nginx_sys::{ngx_http_request_t, ngx_module_t, ngx_str_t};
use ngx::http::HttpModule;

/// This module, as the `ngx` crate's typed configuration traits see it. Its `HttpModule`
/// implementation (the hooks) is the wiring in `lib.rs`; the configuration types are attached
/// to it in `conf`.
pub(crate) struct WsgiModule;

/// This module's descriptor (its indexes, written by nginx before any callback runs).
pub(crate) fn module() -> &'static ngx_module_t {
    <WsgiModule as HttpModule>::module()
}

/// An nginx string as bytes (empty for a NULL string).
pub(crate) fn ngx_bytes(s: &ngx_str_t) -> &[u8] {
    if s.data.is_null() || s.len == 0 {
        &[]
    } else {
        // SAFETY: a non-NULL ngx_str_t describes `len` readable bytes.
        unsafe { std::slice::from_raw_parts(s.data, s.len) }
    }
}

/// A request pointer that only the event-loop thread dereferences: other threads only carry it
/// along inside a mutex. NULL once the request's task is done.
pub(crate) struct LoopRequest(pub(crate) *mut ngx_http_request_t);

// SAFETY: the pointer is only dereferenced on the event-loop thread.
unsafe impl Send for LoopRequest {}

impl LoopRequest {
    pub(crate) fn none() -> Self {
        LoopRequest(std::ptr::null_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngx_bytes_of_empty_and_null_strings() {
        assert_eq!(ngx_bytes(&ngx_str_t::empty()), b"");
        let text = *b"wsgi";
        let s = ngx_str_t {
            len: text.len(),
            data: text.as_ptr().cast_mut(),
        };
        assert_eq!(ngx_bytes(&s), b"wsgi");
    }
}
