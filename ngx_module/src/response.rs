//! Turning the app's outcome into nginx's response: status, headers, one body buffer.

use nginx_sys::{
    ngx_buf_t, ngx_chain_t, ngx_file_t, ngx_http_core_get_method, ngx_http_internal_redirect,
    ngx_http_named_location, ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header,
    ngx_http_send_special, ngx_int_t, ngx_list_push, ngx_pcalloc, ngx_str_t, ngx_table_elt_t,
    NGX_DONE, NGX_ERROR, NGX_HTTP_CLIENT_CLOSED_REQUEST, NGX_HTTP_FLUSH, NGX_HTTP_GET,
    NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_LAST, NGX_OK,
};
use std::os::fd::AsRawFd;

use ngx_wsgi::accel::{check_redirect, AccelHeaders, RedirectTarget};
use ngx_wsgi::file_wrapper::FileRange;
use ngx_wsgi::{Outcome, OutcomeKind, ResponseHead};

use crate::ffi::pool::pool_str;

/// How the part of a response that went out while the app ran ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamEnd {
    /// The head (and maybe some body) went out already.
    pub head_sent: bool,
    /// Output stopped early: the client went away, or sending failed.
    pub cancelled: bool,
    /// nginx could not send (a failed header or write).
    pub failed: bool,
    /// The server ended the response cleanly in the app's place (an event stream at worker
    /// exit): nothing more goes out.
    pub ended_by_server: bool,
    /// The end of the app's whole body went out before the app's `close()` returned.
    pub ended: bool,
}

/// Sends the app's outcome (the rest of it, when it streamed); returns what to finalize the
/// request with (the caller finalizes it, exactly once). `outcome` is None when running the app
/// failed inside the module.
///
/// # Safety
/// `r` is live on the event loop, no longer blocked on the app's task; the outcome's body lives
/// until the request's pool is destroyed.
pub(crate) unsafe fn send(
    r: *mut ngx_http_request_t,
    outcome: Option<&Outcome>,
    streamed: StreamEnd,
) -> ngx_int_t {
    // SAFETY: per the function contract.
    unsafe {
        if (*(*r).connection).error() != 0 {
            return NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t;
        }
        if streamed.head_sent {
            return finish_stream(r, outcome.map(|o| o.kind), streamed);
        }
        let Some(outcome) = outcome else {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        };
        let head = match (outcome.kind, outcome.head.as_ref()) {
            (OutcomeKind::Failed, _) | (_, None) => {
                return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
            }
            (_, Some(head)) => head,
        };
        // As nginx's upstreams: an intercepted status first, then an X-Accel-Redirect.
        if head.answered_by_server {
            return intercepted(r, head);
        }
        let redirects = !ignored_accel(r).contains(AccelHeaders::REDIRECT);
        if let Some(uri) = head.internal_redirect().filter(|_| redirects) {
            return redirect(r, head, uri);
        }
        let truncated = outcome.kind == OutcomeKind::Truncated;
        // A HEAD gets the Content-Length (and Accept-Ranges) GET would, where its body says it.
        let content_length = outcome.content_length(head, (*r).method == NGX_HTTP_HEAD as usize);
        // Byte ranges are GET's alone (RFC 9110; a HEAD is GET's head): a POST's `Range` (a
        // download button's form) is ignored.
        if outcome.file.is_some()
            && (*r).method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize != 0
            && head.status == 200
            && head.header("Content-Range").is_none()
            && head.header("Accept-Ranges").is_none()
        {
            // A whole file in one buffer: nginx's range filter can answer byte ranges of it
            // (unless the app says it answers ranges itself, as Starlette's FileResponse does).
            (*r).set_allow_ranges(1);
        }
        // A body the app left unread while it still arrives (wsgi_request_buffering off) makes
        // nginx close the connection after this response: the head must say so.
        if truncated || (*r).reading_body() != 0 {
            (*r).set_keepalive(0);
        }
        let rc = send_head(r, head, content_length);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return if truncated {
                NGX_ERROR as ngx_int_t
            } else {
                rc
            };
        }
        let body = &*outcome.body;
        let out = match outcome.file.as_ref().filter(|f| f.len > 0) {
            Some(file) => Some(file_chain(r, file, !truncated)),
            None if body.is_empty() => None,
            None => Some(body_chain(r, body, !truncated)),
        };
        let rc = match out {
            Some(Some(out)) => ngx_http_output_filter(r, out),
            Some(None) => NGX_ERROR as ngx_int_t,
            // Push the header out before a truncated response's connection is cut.
            None if truncated => ngx_http_send_special(r, NGX_HTTP_FLUSH as usize),
            None => ngx_http_send_special(r, NGX_HTTP_LAST as usize),
        };
        // A response that failed after its body started ends without a clean end of message.
        if truncated {
            NGX_ERROR as ngx_int_t
        } else {
            rc
        }
    }
}

/// The app's headers an `X-Accel-Redirect` keeps: those nginx's upstream modules carry across
/// one (`redirect` in their table of upstream headers), so that an app moved from behind
/// `proxy_pass` or `uwsgi_pass` answers the same. Its `Content-Type` is the target's then (a
/// file stored without an extension gets the type the app knows); the others described the
/// body it did not send, or were its own (a CORS middleware's, which the target, this app
/// again, adds a second time). The other `X-Accel-*` that nginx acts on apply to the target too,
/// as nginx took them in before it redirected.
const KEPT_ACROSS_REDIRECT: [&[u8]; 10] = [
    b"content-type",
    b"set-cookie",
    b"content-disposition",
    b"cache-control",
    b"expires",
    b"accept-ranges",
    b"x-accel-limit-rate",
    b"x-accel-charset",
    b"x-accel-buffering",
    b"x-accel-expires",
];

/// `X-Accel-Redirect`: nginx answers from `uri` (a path with optional `?args`, or a named
/// `@location`), as it does for proxied apps, with the app's headers [`KEPT_ACROSS_REDIRECT`].
/// A target that could leave its location (`..`, NUL, ...) is a 500 and an error-log line.
unsafe fn redirect(r: *mut ngx_http_request_t, head: &ResponseHead, uri: &[u8]) -> ngx_int_t {
    // SAFETY: `r` is live on the event loop and has sent nothing; the strings are pool copies.
    unsafe {
        let target = match check_redirect(uri) {
            Ok(target) => target,
            Err(why) => {
                crate::ffi::log::write_log(
                    nginx_sys::NGX_LOG_ERR as usize,
                    (*(*r).connection).log,
                    &format!(
                        "wsgi: the app's X-Accel-Redirect \"{}\" was refused: {why}",
                        String::from_utf8_lossy(uri).escape_debug()
                    ),
                );
                return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
            }
        };
        let named = matches!(target, RedirectTarget::Named(_));
        // nginx's internal URIs are decoded ones, as `r->uri` is.
        let (target, args) = match &target {
            RedirectTarget::Named(name) => (pool_str(r, name, false), Ok(ngx_str_t::empty())),
            RedirectTarget::Uri { path, args, .. } => {
                (pool_str(r, path, false), pool_str(r, args, false))
            }
        };
        let (Ok(mut target), Ok(mut args)) = (target, args) else {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        };
        if set_headers(r, &head.keeping(&KEPT_ACROSS_REDIRECT), None).is_err() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        (*r).headers_out.status = 0;
        (*r).headers_out.status_line = ngx_str_t::empty();
        if (*r).method != NGX_HTTP_HEAD as usize {
            (*r).method = NGX_HTTP_GET as usize;
            (*r).method_name = ngx_http_core_get_method;
        }
        if named {
            ngx_http_named_location(r, &mut target);
        } else {
            ngx_http_internal_redirect(r, &mut target, &mut args);
        }
        // The redirect took its own reference to the request; this releases the app's.
        NGX_DONE as ngx_int_t
    }
}

/// A status the location's `error_page` answers (`wsgi_intercept_errors`): nginx finalizes the
/// request with it, as its upstream modules do, and the app's body is not sent. A 401 keeps the
/// app's `WWW-Authenticate` (nginx's upstreams keep it too: the challenge is what makes it one).
unsafe fn intercepted(r: *mut ngx_http_request_t, head: &ResponseHead) -> ngx_int_t {
    // SAFETY: `r` is live on the event loop and has sent nothing; the strings are pool copies.
    unsafe {
        if head.status == 401
            && set_headers(r, &head.keeping(&[b"www-authenticate"]), None).is_err()
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        (*r).headers_out.status = 0;
        (*r).headers_out.status_line = ngx_str_t::empty();
        (*r).headers_out.content_length_n = -1;
        // A body the app left unread while it still arrives: the connection ends after the page.
        if (*r).reading_body() != 0 {
            (*r).set_keepalive(0);
        }
        head.status as ngx_int_t
    }
}

/// Ends a response whose head and body went out while the app ran.
unsafe fn finish_stream(
    r: *mut ngx_http_request_t,
    kind: Option<OutcomeKind>,
    end: StreamEnd,
) -> ngx_int_t {
    // SAFETY: `r` is live on the event loop and its header was sent.
    unsafe {
        match kind {
            _ if end.failed => NGX_ERROR as ngx_int_t,
            _ if end.ended_by_server => NGX_OK as ngx_int_t,
            // Its end went out before close(): a client that left after it had it all.
            Some(OutcomeKind::Complete) if end.ended => NGX_OK as ngx_int_t,
            Some(OutcomeKind::ClientGone) => NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t,
            _ if end.cancelled => NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t,
            Some(OutcomeKind::Complete) if (*r).header_only() != 0 => NGX_OK as ngx_int_t,
            Some(OutcomeKind::Complete) => ngx_http_send_special(r, NGX_HTTP_LAST as usize),
            // The app failed after its body started: whatever is queued goes out, then the
            // connection is cut so that the client sees an incomplete message.
            _ => {
                (*r).set_keepalive(0);
                ngx_http_send_special(r, NGX_HTTP_FLUSH as usize);
                NGX_ERROR as ngx_int_t
            }
        }
    }
}

/// Sets the response head on `r` and sends it; returns `ngx_http_send_header`'s result (a 500
/// when the head cannot be set).
///
/// # Safety
/// `r` is live on the event loop and has not sent its header yet.
pub(crate) unsafe fn send_head(
    r: *mut ngx_http_request_t,
    head: &ResponseHead,
    content_length: Option<u64>,
) -> ngx_int_t {
    // SAFETY: per the function contract.
    unsafe {
        let content_length = if head.status < 200 || head.status == 204 {
            None
        } else {
            content_length
        };
        if set_headers(r, head, content_length).is_err() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        if head.is_bodiless() {
            (*r).set_header_only(1);
        }
        // The app answered conditionals itself; nginx must not turn its 200 into a 304 or 412.
        (*r).set_disable_not_modified(1);
        ngx_http_send_header(r)
    }
}

/// One buffer over the body bytes (which must outlive the request's output).
///
/// # Safety
/// `r` is live on the event loop; `body` lives until the request's pool is destroyed.
pub(crate) unsafe fn body_chain(
    r: *mut ngx_http_request_t,
    body: &[u8],
    last: bool,
) -> Option<*mut ngx_chain_t> {
    // SAFETY: the request pool is live; the buffer only points at `body`, which outlives the
    // request's output (the job is freed by the pool's cleanup).
    unsafe {
        let b = ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        if b.is_null() {
            return None;
        }
        let start = body.as_ptr().cast_mut();
        (*b).start = start;
        (*b).pos = start;
        (*b).last = start.add(body.len());
        (*b).end = (*b).last;
        (*b).set_memory(1);
        single_link(r, b, last)
    }
}

/// One buffer over a file range (sent with `sendfile` where nginx uses it). The descriptor is
/// owned by the job, which the request's pool frees last.
unsafe fn file_chain(
    r: *mut ngx_http_request_t,
    file: &FileRange,
    last: bool,
) -> Option<*mut ngx_chain_t> {
    // SAFETY: the request pool is live; the buffer refers to a descriptor that stays open until
    // the pool's cleanup drops the job.
    unsafe {
        let b = ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        let f = ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_file_t>()) as *mut ngx_file_t;
        if b.is_null() || f.is_null() {
            return None;
        }
        (*f).fd = file.fd.as_raw_fd();
        (*f).name = ngx_str_t {
            len: file.label.count_bytes(),
            data: file.label.as_ptr().cast::<u8>().cast_mut(),
        };
        (*f).log = (*(*r).connection).log;
        (*b).set_in_file(1);
        (*b).file = f;
        (*b).file_pos = file.offset as i64;
        (*b).file_last = (file.offset + file.len) as i64;
        single_link(r, b, last)
    }
}

/// Marks `b` as the response's end (or, for a response about to be cut, as a flush) and wraps
/// it in a chain link.
unsafe fn single_link(
    r: *mut ngx_http_request_t,
    b: *mut ngx_buf_t,
    last: bool,
) -> Option<*mut ngx_chain_t> {
    // SAFETY: the request pool is live and `b` is a buffer allocated from it.
    unsafe {
        let cl = ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_chain_t>()) as *mut ngx_chain_t;
        if cl.is_null() {
            return None;
        }
        if last {
            (*b).set_last_buf(u32::from(r == (*r).main));
            (*b).set_last_in_chain(1);
        } else {
            (*b).set_flush(1);
        }
        (*cl).buf = b;
        (*cl).next = std::ptr::null_mut();
        Some(cl)
    }
}

/// From a content handler: a 200 with `body` (which outlives the request), returning what the
/// handler returns.
///
/// # Safety
/// `r` is live on the event loop, in its content phase.
pub(crate) unsafe fn send_static(
    r: *mut ngx_http_request_t,
    content_type: &[u8],
    body: &[u8],
) -> ngx_int_t {
    let mut head = ResponseHead::new(200, b"200 OK", 1, 12 + content_type.len());
    head.push_header(b"Content-Type", content_type);
    // SAFETY: per the function contract.
    unsafe { send_whole(r, &head, body) }
}

/// From a content handler: `head` with `body` (which outlives the request) and its length,
/// returning what the handler returns.
///
/// # Safety
/// `r` is live on the event loop, in its content phase.
pub(crate) unsafe fn send_whole(
    r: *mut ngx_http_request_t,
    head: &ResponseHead,
    body: &[u8],
) -> ngx_int_t {
    // SAFETY: `r` is live on the event loop, in its content phase.
    unsafe {
        let rc = send_head(r, head, Some(body.len() as u64));
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        if body.is_empty() {
            return ngx_http_send_special(r, NGX_HTTP_LAST as usize);
        }
        match body_chain(r, body, true) {
            Some(out) => ngx_http_output_filter(r, out),
            None => NGX_ERROR as ngx_int_t,
        }
    }
}

unsafe fn set_headers(
    r: *mut ngx_http_request_t,
    head: &ResponseHead,
    content_length: Option<u64>,
) -> Result<(), ()> {
    // SAFETY: `r` is live; every string is copied into its pool.
    unsafe {
        let out = &mut (*r).headers_out;
        out.status = head.status as usize;
        out.status_line = pool_str(r, head.status_line(), false)?;
        out.content_length_n = match content_length {
            Some(n) => ngx_wsgi::content_length::to_off_t(n).ok_or(())?,
            None => -1,
        };
        let mut have_type = false;
        let mut have_rate = false;
        let ignored = ignored_accel(r);
        for (name, value) in head.headers() {
            if ngx_wsgi::accel::is_for_server(name) {
                if !ignored.covers(name) {
                    set_accel(r, name, value, &mut have_rate)?;
                }
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-type") {
                if have_type {
                    // A response has one type: the first counts, as for a proxied response.
                    crate::ffi::log::write_log(
                        nginx_sys::NGX_LOG_WARN as usize,
                        (*(*r).connection).log,
                        &format!(
                            "wsgi: the app sent a second Content-Type, \"{}\"; the first is kept",
                            String::from_utf8_lossy(value).escape_debug()
                        ),
                    );
                    continue;
                }
                have_type = true;
                out.content_type = pool_str(r, value, false)?;
                // As nginx does for proxied responses: the type without its charset parameter,
                // so that gzip_types, charset and the other *_types match it.
                let (type_len, charset) = ngx_wsgi::response::split_charset(value);
                out.content_type_len = type_len;
                if let Some((start, len)) = charset {
                    out.charset = ngx_str_t {
                        len,
                        data: out.content_type.data.add(start),
                    };
                }
                continue;
            }
            let h = ngx_list_push(&mut out.headers) as *mut ngx_table_elt_t;
            if h.is_null() {
                return Err(());
            }
            (*h).hash = 1;
            #[cfg(ngx_table_elt_next)]
            {
                (*h).next = std::ptr::null_mut();
            }
            (*h).key = pool_str(r, name, false)?;
            (*h).value = pool_str(r, value, false)?;
            (*h).lowcase_key = pool_str(r, name, true)?.data;
            crate::header_fields::note(r, out, name, h)?;
        }
        Ok(())
    }
}

/// The `X-Accel-*` headers `r`'s location ignores. The core drops them from a WSGI app's head
/// already; an ASGI app's head comes with them.
unsafe fn ignored_accel(r: *mut ngx_http_request_t) -> AccelHeaders {
    // SAFETY: `r` is live on the event loop.
    unsafe { crate::conf::loc_conf(&*r) }
        .map_or(AccelHeaders::NONE, |lc| lc.ignore_headers.headers())
}

/// An `X-Accel-*` header the location does not ignore, acted on as nginx's upstream modules act
/// on it (the first `X-Accel-Limit-Rate` counts; one that is not a number is ignored); none
/// reaches the client.
unsafe fn set_accel(
    r: *mut ngx_http_request_t,
    name: &[u8],
    value: &[u8],
    have_rate: &mut bool,
) -> Result<(), ()> {
    // SAFETY: `r` is live; the charset string is copied into its pool.
    unsafe {
        if name.eq_ignore_ascii_case(b"x-accel-limit-rate") && !*have_rate {
            *have_rate = true;
            if let Some(rate) = ngx_wsgi::accel::limit_rate(value) {
                (*r).limit_rate = usize::try_from(rate).unwrap_or(usize::MAX);
                (*r).set_limit_rate_set(1);
            }
        } else if name.eq_ignore_ascii_case(b"x-accel-charset") {
            let charset =
                ngx_pcalloc((*r).pool, std::mem::size_of::<ngx_str_t>()) as *mut ngx_str_t;
            if charset.is_null() {
                return Err(());
            }
            *charset = pool_str(r, value, false)?;
            (*r).headers_out.override_charset = charset;
        }
        Ok(())
    }
}
