//! The content handler of a `wsgi_status` location: the metrics as Prometheus text.

use nginx_sys::{
    ngx_http_discard_request_body, ngx_http_request_t, ngx_int_t, NGX_HTTP_GET, NGX_HTTP_HEAD,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_OK,
};

use crate::ffi::guard;
use crate::ffi::pool::pool_copy;

/// Prometheus' text exposition format.
const CONTENT_TYPE: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

pub(crate) unsafe extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard(
        "the wsgi_status handler",
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        || {
            // SAFETY: nginx passes a live request on the event loop; the zone lives as long as
            // the cycle.
            unsafe {
                if (*r).method != NGX_HTTP_GET as usize && (*r).method != NGX_HTTP_HEAD as usize {
                    return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
                }
                let rc = ngx_http_discard_request_body(r);
                if rc != NGX_OK as ngx_int_t {
                    return rc;
                }
                let zone = crate::conf::main_conf_of(&*r)
                    .map_or(std::ptr::null_mut(), |m| m.status_zone.0);
                let body = crate::metrics::of_zone(zone)
                    .map(crate::metrics::render)
                    .unwrap_or_default();
                let Some(body) = pool_copy(r, body.as_bytes()) else {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
                };
                crate::response::send_static(r, CONTENT_TYPE, body)
            }
        },
    )
}
