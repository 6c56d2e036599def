//! `wsgi_read_timeout` reached while the app runs: the 504 sent in the app's place, or the
//! response cut when it has started.

use nginx_sys::{
    ngx_http_output_filter, ngx_http_request_t, ngx_int_t, NGX_ERROR, NGX_HTTP_GATEWAY_TIME_OUT,
    NGX_HTTP_VERSION_11, NGX_OK,
};
use ngx_wsgi::ResponseHead;

use super::Stream;

/// How a timed-out request whose response has not started is answered.
#[derive(Clone, Copy)]
pub(crate) enum TimeoutAnswer {
    /// The module's 504 page, sent now.
    PageNow,
    /// nginx's 504 when the request is finalized with it (so that the location's `error_page
    /// 504` applies, as to a proxied app's timeout): nothing is sent now.
    AtFinalize,
}

impl Stream {
    /// The request's deadline passed while its app runs: answers 504 in its place (or, when the
    /// response has started, cuts it) and stops the app's output. Returns how to finalize, and
    /// whether the server ended the response so (not when it had gone out whole already, nor
    /// when its 504 is left to the finalization).
    ///
    /// # Safety
    /// Event-loop thread; `r` is live.
    pub(crate) unsafe fn time_out(
        &self,
        r: *mut ngx_http_request_t,
        answer: TimeoutAnswer,
    ) -> (ngx_int_t, bool) {
        let mut st = self.lock();
        if st.ended && !st.failed {
            // The whole body went out before the app's close(), which the deadline interrupts:
            // the response is not cut.
            return (NGX_OK as ngx_int_t, false);
        }
        if st.head_sent {
            self.cancel(&mut st, true);
            // The request is finalized (and its connection closed) when the app's thread is
            // back, which a call stuck in C code may never be: the client would wait on a
            // response that has no end. Over HTTP/1 the connection is cut now, and an HTTP/2
            // stream reset now (HTTP/3's is reset at the finalization).
            // SAFETY: per the function contract.
            unsafe {
                let c = (*r).connection;
                if r == (*r).main
                    && (*r).http_version <= NGX_HTTP_VERSION_11 as usize
                    && !crate::close_delimited::reset_if_cut_reads_as_end(r)
                {
                    libc::shutdown((*c).fd, libc::SHUT_RDWR);
                }
                #[cfg(ngx_feature = "http_v2")]
                if r == (*r).main {
                    crate::h2_reset::reset_now(r);
                }
            }
            return (NGX_ERROR as ngx_int_t, true);
        }
        st.head_sent = true;
        st.head = None;
        st.pending.clear();
        st.unsent = 0;
        self.cancel(&mut st, false);
        drop(st);
        // SAFETY: per the function contract.
        unsafe {
            // The app's thread may still be busy: this connection takes no further request.
            (*r).set_keepalive(0);
            match answer {
                TimeoutAnswer::AtFinalize => (NGX_HTTP_GATEWAY_TIME_OUT as ngx_int_t, false),
                TimeoutAnswer::PageNow => (send_timeout_page(r), true),
            }
        }
    }
}

/// Sends the module's 504 page for a request whose deadline passed (its output stopped, nothing
/// of its response sent, its connection kept alive no more), returning how to finalize it.
///
/// # Safety
/// Event-loop thread; `r` is live and has sent nothing.
unsafe fn send_timeout_page(r: *mut ngx_http_request_t) -> ngx_int_t {
    const BODY: &[u8] = b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n\
        <center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n";
    let mut head = ResponseHead::new(504, b"504 Gateway Time-out", 1, 21);
    head.push_header(b"Content-Type", b"text/html");
    head.content_length = Some(BODY.len() as u64);
    // SAFETY: per the function contract; the body is static.
    unsafe {
        let rc = crate::response::send_head(r, &head, head.content_length);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        let rc = match crate::response::body_chain(r, BODY, true) {
            Some(out) => ngx_http_output_filter(r, out),
            None => NGX_ERROR as ngx_int_t,
        };
        if rc == NGX_OK as ngx_int_t {
            end_if_sent_whole(r);
        }
        rc
    }
}

/// The request's 504 went out while the app's thread still has the request, which is finalized
/// (and its connection closed) when the thread is back: a client that reads to the close (an
/// HTTP/1.0 one, a script's) would wait for it, where a proxied app's timeout closes at once.
/// Over HTTP/1, once the response is out whole, its end is sent now; not over TLS, where an end
/// without TLS's own close (nginx's, at the finalization) reads as a truncated response.
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn end_if_sent_whole(r: *mut ngx_http_request_t) {
    // SAFETY: per the function contract; a live request has a live connection.
    unsafe {
        let c = (*r).connection;
        if r == (*r).main
            && (*r).http_version <= NGX_HTTP_VERSION_11 as usize
            && (*c).ssl.is_null()
            && (*r).buffered() == 0
            && (*c).buffered() == 0
            && (*r).postponed.is_null()
        {
            libc::shutdown((*c).fd, libc::SHUT_WR);
        }
    }
}
