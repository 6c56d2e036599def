//! Turning the app's outcome into Apache's response: status and headers on the `request_rec`,
//! the body down the output filter chain.

use std::ffi::c_int;
use std::os::fd::IntoRawFd;

use ngx_wsgi::accel::{check_redirect, RedirectTarget};
use ngx_wsgi::{Outcome, OutcomeKind, ResponseHead};

use crate::bindings::{
    ap_conn_keepalive_e_AP_CONN_CLOSE, ap_discard_request_body, ap_get_core_module_config,
    ap_internal_redirect, apr_brigade_insert_file, apr_bucket_file_enable_mmap, apr_file_t,
    apr_os_file_put, apr_pool_cleanup_null, apr_pool_cleanup_register, apr_status_t,
    apr_table_addn, apr_table_unset, core_dir_config, request_rec, APLOG_ERR, APR_FOPEN_READ,
    APR_FOPEN_SENDFILE_ENABLED, APR_SUCCESS, ENABLE_MMAP_OFF, ENABLE_SENDFILE_ON,
    HTTP_INTERNAL_SERVER_ERROR, M_GET, OK,
};
use crate::brigade::Out;
use crate::client_io::{pool_str, set_head};
use crate::side::Side;

/// Sends the outcome of a request whose app has returned; the handler's return value.
///
/// # Safety
/// `r` is a live request on the calling thread, inside its handler.
pub(crate) unsafe fn send(r: *mut request_rec, outcome: Outcome, side: &Side) -> c_int {
    // SAFETY: per the function contract.
    unsafe {
        let c = (*r).connection;
        if outcome.kind == OutcomeKind::ClientGone {
            (*c).keepalive = ap_conn_keepalive_e_AP_CONN_CLOSE;
            return OK as c_int;
        }
        let out = side.out();
        if side.head_sent() {
            out.data(&outcome.body);
            finish(r, out, outcome.kind != OutcomeKind::Complete);
            return OK as c_int;
        }
        let head = match (outcome.kind, outcome.head.as_ref()) {
            (OutcomeKind::Failed, _) | (_, None) => return HTTP_INTERNAL_SERVER_ERROR as c_int,
            (_, Some(head)) => head,
        };
        if let Some(uri) = head.internal_redirect() {
            return redirect(r, head, uri);
        }
        let truncated = outcome.kind == OutcomeKind::Truncated;
        let content_length = outcome.content_length(head, (*r).header_only != 0);
        set_head(r, head, content_length);
        match outcome.file {
            // A HEAD's body is dropped by Apache, but its filters read it: its length, where it
            // is not the app's (GET's) own, would replace that. One of that length goes through
            // them as GET's does (deflate's encoding, a range's 206 come out the same).
            None if (*r).header_only != 0
                && head
                    .content_length
                    .is_some_and(|n| n != outcome.body.len() as u64) => {}
            Some(file) if file.len > 0 => {
                if !insert_file(r, out, file) {
                    (*c).keepalive = ap_conn_keepalive_e_AP_CONN_CLOSE;
                    return OK as c_int;
                }
            }
            _ => out.data(&outcome.body),
        }
        finish(r, out, truncated);
        OK as c_int
    }
}

/// `X-Accel-Redirect: /uri?args` from the app: Apache answers from that URI instead, through an
/// internal redirect (as mod_cgi does for a local `Location`), so a protected file can be sent by
/// Apache once the app has authorised it. The target is fetched with GET (HEAD stays HEAD); the
/// app's other headers (`Set-Cookie`, `Content-Disposition`, ...) are kept, except those that
/// described the body it did not send. A target can be kept from direct access with
/// `Require env REDIRECT_STATUS`, which only internal redirects satisfy.
///
/// # Safety
/// `r` is a live request on the calling thread, inside its handler, that has sent nothing.
unsafe fn redirect(r: *mut request_rec, head: &ResponseHead, uri: &[u8]) -> c_int {
    let refusal = match check_redirect(uri) {
        // Apache decodes the path itself, as it does for a request line.
        Ok(RedirectTarget::Uri { .. }) => None,
        Ok(RedirectTarget::Named(_)) => Some("named locations are nginx's".to_string()),
        Err(why) => Some(why.to_string()),
    };
    if let Some(why) = refusal {
        crate::log::write(
            APLOG_ERR as c_int,
            &format!(
                "wsgi: the app's X-Accel-Redirect \"{}\" was refused: {why}",
                String::from_utf8_lossy(uri).escape_debug()
            ),
        );
        return HTTP_INTERNAL_SERVER_ERROR as c_int;
    }
    // SAFETY: per the function contract; strings are copied into the request's pool, whose
    // error headers the redirected request shares.
    unsafe {
        for (name, value) in head.for_internal_redirect().headers() {
            apr_table_addn((*r).err_headers_out, pool_str(r, name), pool_str(r, value));
        }
        if (*r).header_only == 0 {
            (*r).method = c"GET".as_ptr();
            (*r).method_number = M_GET as c_int;
        }
        // The body is not the redirected request's: read and dropped first. One Apache refused
        // has been answered (AP_FILTER_ERROR: nothing more to send), a lost client's is a 400.
        let discarded = ap_discard_request_body(r);
        if discarded != OK as c_int {
            return discarded;
        }
        apr_table_unset((*r).headers_in, c"Content-Length".as_ptr());
        ap_internal_redirect(pool_str(r, uri), r);
    }
    OK as c_int
}

/// Ends the response: cleanly, or (`broken`) so that the client sees an incomplete message.
///
/// # Safety
/// `r` is a live request on the calling thread, inside its handler; `out` is its brigade.
unsafe fn finish(r: *mut request_rec, out: &Out, broken: bool) {
    if broken {
        // What there is goes out first: with the end of the response in the same brigade,
        // Apache would put its own, complete, Content-Length on it.
        out.flush();
        if out.pass() {
            out.broken();
            out.eos();
            out.pass();
            // SAFETY: the request is live, on its handler's thread, its head sent.
            unsafe { crate::client_io::reset_if_close_delimited(r) };
        }
        // SAFETY: the request and its connection are live.
        unsafe { (*(*r).connection).keepalive = ap_conn_keepalive_e_AP_CONN_CLOSE };
        return;
    }
    // SAFETY: the request is live (the function contract).
    if unsafe { body_left(r) } {
        // The response must reach the client before the handler reads and drops the rest of
        // the body (see `handler`), not wait in Apache's output buffer meanwhile.
        out.flush();
    }
    out.eos();
    out.pass();
}

/// Whether some of the request's body is still to be read (`ap_get_client_block` sets
/// `remaining` to -1 at its end).
///
/// # Safety
/// `r` is a live request.
unsafe fn body_left(r: *mut request_rec) -> bool {
    // SAFETY: per the function contract.
    unsafe { (*r).remaining > 0 || ((*r).read_chunked != 0 && (*r).remaining == 0) }
}

/// Appends a `wsgi.file_wrapper` file range; its descriptor is closed with the request's pool,
/// after the file has been sent.
///
/// # Safety
/// As for `finish`.
unsafe fn insert_file(
    r: *mut request_rec,
    out: &Out,
    file: ngx_wsgi::file_wrapper::FileRange,
) -> bool {
    // SAFETY: the descriptor is ours (a duplicate); the pool cleanup closes it exactly once;
    // the core's per-directory configuration is the request's, as Apache's own file handler reads it.
    unsafe {
        let core = ap_get_core_module_config((*r).per_dir_config) as *const core_dir_config;
        // As Apache sends a static file: sendfile where `EnableSendfile On` allows it, and no
        // memory map where `EnableMMAP Off` forbids one (a file on NFS truncated meanwhile
        // would be a SIGBUS for the whole child).
        let sendfile = !core.is_null() && (*core).enable_sendfile() == ENABLE_SENDFILE_ON;
        let no_mmap = !core.is_null() && (*core).enable_mmap() == ENABLE_MMAP_OFF;
        let mut fd = file.fd.into_raw_fd();
        let mut apr_file: *mut apr_file_t = std::ptr::null_mut();
        let pool = (*r).pool;
        apr_pool_cleanup_register(
            pool,
            fd as isize as *const std::ffi::c_void,
            Some(close_fd),
            Some(apr_pool_cleanup_null),
        );
        let flags = match sendfile {
            true => APR_FOPEN_READ | APR_FOPEN_SENDFILE_ENABLED,
            false => APR_FOPEN_READ,
        };
        if apr_os_file_put(&mut apr_file, &mut fd, flags as i32, pool)
            != APR_SUCCESS as apr_status_t
        {
            return false;
        }
        let bucket = apr_brigade_insert_file(
            out.raw(),
            apr_file,
            file.offset as i64,
            file.len as i64,
            pool,
        );
        // One bucket: the insert splits a range only where `apr_off_t` is wider than `apr_size_t`.
        if no_mmap && !bucket.is_null() {
            apr_bucket_file_enable_mmap(bucket, 0);
        }
        true
    }
}

unsafe extern "C" fn close_fd(data: *mut std::ffi::c_void) -> apr_status_t {
    crate::ffi_guard::guard("closing a response's file", (), || {
        // SAFETY: `data` carries the descriptor registered by `insert_file`, owned by this
        // cleanup.
        unsafe { libc::close(data as isize as i32) };
    });
    APR_SUCCESS as apr_status_t
}
