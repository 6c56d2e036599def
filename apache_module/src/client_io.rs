//! What goes to and comes from the client for a request through Apache's API, with no turn
//! taking of its own (callers hold the request's turn, see `side`): the app's response head on
//! the `request_rec`, a block of the request body, and the deadline's answer in the app's place.

use std::ffi::c_int;
use std::io;

use ngx_wsgi::ResponseHead;

use crate::bindings::{
    ap_conn_keepalive_e_AP_CONN_CLOSE, ap_get_client_block, ap_get_conn_socket,
    ap_remove_output_filter_byhandle, ap_set_content_length, ap_set_content_type,
    ap_ssl_conn_is_ssl, apr_interval_time_t, apr_os_sock_get, apr_os_sock_t, apr_pstrmemdup,
    apr_socket_timeout_get, apr_socket_timeout_set, apr_table_addn, apr_table_get, request_rec,
    APR_SUCCESS, HTTP_GATEWAY_TIME_OUT, M_GET,
};
use crate::brigade::Out;

/// # Safety
/// `r` is live; the copy lives in its pool.
pub(crate) unsafe fn pool_str(r: *mut request_rec, s: &[u8]) -> *const std::ffi::c_char {
    // SAFETY: pstrmemdup copies `s.len()` bytes and adds a NUL.
    unsafe { apr_pstrmemdup((*r).pool, s.as_ptr().cast(), s.len()) }
}

/// Puts the app's status and headers on `r`.
///
/// # Safety
/// `r` is a live request whose response head has not gone out.
pub(crate) unsafe fn set_head(r: *mut request_rec, head: &ResponseHead, length: Option<u64>) {
    // SAFETY: per the function contract; every string is copied into the request's pool.
    unsafe {
        (*r).status = c_int::from(head.status);
        (*r).status_line = pool_str(r, head.status_line());
        // The app's own type or none: not one mod_mime guessed from the URL's extension.
        (*r).content_type = std::ptr::null();
        for (name, value) in head.headers() {
            if ngx_wsgi::accel::is_for_server(name) {
                // X-Accel-Limit-Rate and X-Accel-Charset have no counterpart here; like the
                // redirect, none of them is for the client.
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-type") {
                // Apache's own field: its filters (deflate, charset) and header filter use it.
                ap_set_content_type(r, pool_str(r, value));
            } else {
                apr_table_addn((*r).headers_out, pool_str(r, name), pool_str(r, value));
            }
        }
        if let Some(length) = length.and_then(ngx_wsgi::content_length::to_off_t) {
            ap_set_content_length(r, length);
        }
        // RFC 9110 defines byte ranges for GET alone (a HEAD is GET's head): a POST's `Range`
        // (a download button's form) is ignored, where Apache's byte-range filter would answer
        // it with a 206.
        if (*r).method_number != M_GET as c_int {
            ap_remove_output_filter_byhandle((*r).output_filters, c"BYTERANGE".as_ptr());
        }
    }
}

/// The largest block read from the client at once.
pub(crate) const READ_MAX: usize = 256 * 1024;

const BODY: &[u8] = b"<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n\
<title>504 Gateway Timeout</title>\n</head><body>\n<h1>Gateway Timeout</h1>\n\
<p>The application did not answer in time.</p>\n</body></html>\n";

/// # Safety
/// `r` is a live request, set up by `ap_setup_client_block`, that no other thread uses meanwhile.
pub(crate) unsafe fn read_block(r: *mut request_rec, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max.clamp(1, READ_MAX)];
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe { ap_get_client_block(r, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the client's request body could not be read (connection lost, bad framing, or over LimitRequestBody)",
        ));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The status Apache answered the request with itself, if it did: its HTTP input filter, refusing
/// the body (over `LimitRequestBody`, broken chunked framing), sends its error page and ends the
/// response (an end of stream down the output filters) before the read fails, which
/// `ap_get_client_block` does not tell apart from a lost client.
///
/// # Safety
/// `r` is live and the calling thread has the request's turn.
pub(crate) unsafe fn ended_by_apache(r: *const request_rec) -> Option<c_int> {
    // SAFETY: per the function contract.
    unsafe { ((*r).eos_sent != 0).then_some((*r).status) }
}

/// Answers a timed-out request in its app's place: a 504 when nothing of the response went out
/// yet, else the end of what did, cut so that the client sees an incomplete response. The
/// connection is closed after it either way: its thread is still busy in Python.
///
/// # Safety
/// `r` is live and the calling thread has the request's turn; `out` is its brigade.
pub(crate) unsafe fn answer_timeout(r: *mut request_rec, out: &Out, head_sent: bool) {
    // SAFETY: per the function contract; strings and buckets come from the request's pool and
    // its connection's allocator, which only this thread uses during its turn.
    unsafe {
        let c = (*r).connection;
        (*c).keepalive = ap_conn_keepalive_e_AP_CONN_CLOSE;
        if head_sent {
            out.broken();
        } else {
            (*r).status = HTTP_GATEWAY_TIME_OUT as c_int;
            (*r).status_line = c"504 Gateway Timeout".as_ptr();
            ap_set_content_type(r, c"text/html; charset=iso-8859-1".as_ptr());
            ap_set_content_length(r, BODY.len() as i64);
            out.data(BODY);
        }
        out.eos();
        out.flush();
        // A connection of its own (not an HTTP/2 stream, whose socket is the whole connection's):
        // the answer is written without waiting for a client that does not read (the deadline
        // thread serves every request of the child), and the client sees the end at once; a
        // whole 504 over TLS at Apache's close (with TLS's own end: a bare one reads as a
        // truncation), while a cut response's truncation is the point.
        let tls = ap_ssl_conn_is_ssl(c) != 0;
        let sock = if (*c).master.is_null() {
            ap_get_conn_socket(c)
        } else {
            std::ptr::null_mut()
        };
        if sock.is_null() {
            out.pass();
            return;
        }
        let mut saved: apr_interval_time_t = 0;
        apr_socket_timeout_get(sock, &mut saved);
        apr_socket_timeout_set(sock, 0);
        out.pass();
        apr_socket_timeout_set(sock, saved);
        if head_sent && reset_if_close_delimited(r) {
            return;
        }
        if tls && !head_sent {
            return;
        }
        let mut fd: apr_os_sock_t = -1;
        if apr_os_sock_get(&mut fd, sock) == APR_SUCCESS as i32 {
            libc::shutdown(fd, libc::SHUT_WR);
        }
    }
}

/// After a response's broken end went out: where the connection's close is the response's end
/// (no chunked encoding and no Content-Length: an HTTP/1.0 client, or one that asked to
/// close), a close would read as the whole response, so the connection is reset instead
/// (`ngx_wsgi::connection_reset`) and marked aborted, which makes Apache close it at once,
/// without the FIN of its lingering close. False when it needs no reset (an HTTP/2 stream's
/// end is its own).
///
/// # Safety
/// `r` is live and the calling thread has the request's turn; its head went out.
pub(crate) unsafe fn reset_if_close_delimited(r: *mut request_rec) -> bool {
    // SAFETY: per the function contract; the header table and the connection live with it.
    unsafe {
        let c = (*r).connection;
        let sized = !apr_table_get((*r).headers_out, c"Content-Length".as_ptr()).is_null();
        if !(*c).master.is_null() || (*r).chunked != 0 || (*r).header_only != 0 || sized {
            return false;
        }
        let sock = ap_get_conn_socket(c);
        let mut fd: apr_os_sock_t = -1;
        if sock.is_null() || apr_os_sock_get(&mut fd, sock) != APR_SUCCESS as i32 {
            return false;
        }
        if !ngx_wsgi::connection_reset::reset(fd) {
            return false;
        }
        (*c).aborted = 1;
        true
    }
}
