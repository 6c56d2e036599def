//! A response cut before its end (its app failed mid-body, its deadline passed) must read as
//! cut. With chunked encoding or a Content-Length, and over
//! HTTP/2 and HTTP/3, its missing end says so; a response delimited by its connection's close
//! (an HTTP/1.0 client, nginx's `proxy_pass` in front with its default `proxy_http_version 1.0`)
//! has no end to miss: a close there reads as its end, and its client (or the proxy's client,
//! whom the proxy passes a whole chunked response) takes the part for the whole. Such a
//! connection is reset instead, which reads as an error.

use nginx_sys::{
    ngx_http_finalize_request, ngx_http_request_t, ngx_int_t, NGX_ERROR, NGX_HTTP_VERSION_11,
};

/// Whether `r`'s response, its head sent, ends with its connection's close.
///
/// # Safety
/// Event-loop thread; `r` is a live request.
unsafe fn delimited_by_close(r: *const ngx_http_request_t) -> bool {
    // SAFETY: per the function contract.
    let r = unsafe { &*r };
    std::ptr::eq(r.main, r)
        && r.http_version <= NGX_HTTP_VERSION_11 as usize
        && r.header_sent() != 0
        && r.header_only() == 0
        // An upgraded connection (a WebSocket) ends with its own close frame.
        && r.headers_out.status != nginx_sys::NGX_HTTP_SWITCHING_PROTOCOLS as usize
        && r.chunked() == 0
        && r.headers_out.content_length_n < 0
}

/// Resets `r`'s connection now when its response, cut, would otherwise read as complete (the
/// descriptor stays nginx's, to close in its time); false when it needs no reset or cannot
/// have one (a Unix-domain socket).
///
/// # Safety
/// Event-loop thread; `r` is a live request.
pub(crate) unsafe fn reset_if_cut_reads_as_end(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: per the function contract.
    if !unsafe { delimited_by_close(r) } {
        return false;
    }
    // SAFETY: a live request's connection is live; its descriptor is a TCP or Unix stream socket.
    let fd = unsafe { (*(*r).connection).fd };
    ngx_wsgi::connection_reset::reset(fd)
}

/// Finalizes `r` with `rc`, as `ngx_http_finalize_request` does, after resetting its connection
/// when `rc` says its response is cut (`NGX_ERROR`) and a close would read as its end.
///
/// # Safety
/// Event-loop thread; `r` is a live request, which this ends.
pub(crate) unsafe fn finalize(r: *mut ngx_http_request_t, rc: ngx_int_t) {
    // SAFETY: per the function contract.
    unsafe {
        if rc == NGX_ERROR as ngx_int_t {
            reset_if_cut_reads_as_end(r);
        }
        ngx_http_finalize_request(r, rc);
    }
}
