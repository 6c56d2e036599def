//! A WSGI event stream ended by the server at worker exit, and the HTTP/1 connection shut once
//! all of it was sent.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use nginx_sys::{
    ngx_http_request_t, ngx_http_send_special, ngx_int_t, NGX_ERROR, NGX_HTTP_LAST,
    NGX_HTTP_VERSION_11,
};

use super::{State, Stream};
use crate::event_streams::{self, EndsAtExit};

/// A WSGI event stream at worker exit: what the app sent goes out, then the end of the
/// response, and the app's next piece fails as if its client had gone. Its thread may still be
/// inside the app (between two events): the request is finalized when it comes back, and
/// meanwhile the connection takes no further request.
impl EndsAtExit for Stream {
    fn end_for_exit(&self) -> bool {
        let mut st = self.lock();
        let r = st.request.0;
        // A thread that came back has its completion on the way, which ends the response as
        // the app did (a failure is cut, not ended).
        if !r.is_null() && st.end_due {
            // The app's body is whole and its end on the way (the app is in its close()): the
            // client's reconnection must not come on this connection, which the exit closes.
            // SAFETY: on the event loop; the request is live while `request` is set.
            unsafe { (*(*r).main).set_keepalive(0) };
            return false;
        }
        if r.is_null() || self.is_cancelled() || self.app_done.load(Ordering::Acquire) {
            return false;
        }
        if st.head.is_none() && !st.head_sent {
            // The app is still before its first event: the stream ends with the head it gave.
            st.head = st.exit_head.take();
            if st.head.is_none() {
                return false;
            }
        }
        // From now on the app's pieces are refused; those it pushed before go out first.
        st.ended_by_server = true;
        // SAFETY: on the event loop (the exiting check's timer); the request is live while
        // `request` is set.
        let mut st = unsafe { self.send_pending(st, r) };
        if self.is_cancelled() || st.failed {
            // Cut meanwhile: the client's doing (or nginx's), not an end.
            st.ended_by_server = false;
            return false;
        }
        self.cancel(&mut st, false);
        drop(st);
        // SAFETY: as above; the output filters run unlocked, as in `send_pending`.
        unsafe {
            (*(*r).main).set_keepalive(0);
            if (*r).header_only() == 0
                && ngx_http_send_special(r, NGX_HTTP_LAST as usize) == NGX_ERROR as ngx_int_t
            {
                self.lock().failed = true;
                return false;
            }
            let mut st = self.lock();
            self.wait_for_writable(&mut st, r);
            if st.failed {
                return false;
            }
            self.shut_once_sent(&mut st, r);
        }
        // The app may wait for its next event where nothing but that event ends the wait.
        if let Some(watch) = self.watch.get() {
            watch.end_wait_for_exit();
        }
        true
    }
}

impl Stream {
    /// An event stream ended at exit, all sent: on plain HTTP/1 the client also sees its
    /// connection end now, not when the app's thread comes back, and does not send its
    /// reconnection on it. Over TLS and HTTP/2 the connection ends with the request.
    ///
    /// # Safety
    /// Event-loop thread; `r` is this stream's live request.
    pub(super) unsafe fn shut_once_sent(&self, st: &mut State, r: *mut ngx_http_request_t) {
        // SAFETY: per the function contract.
        unsafe {
            let c = (*r).connection;
            if st.shut
                || r != (*r).main
                || (*r).http_version > NGX_HTTP_VERSION_11 as usize
                || !(*c).ssl.is_null()
                || (*r).buffered() != 0
                || (*c).buffered() != 0
            {
                return;
            }
            st.shut = true;
            libc::shutdown((*c).fd, libc::SHUT_WR);
        }
    }

    /// Lists the stream among the event streams a worker's exit ends.
    pub(super) fn list_for_exit(&self) {
        self.listed.store(true, Ordering::Release);
        let me: Weak<dyn EndsAtExit> = self.me.clone();
        event_streams::list(self as *const _ as usize, "wsgi", me);
    }
}
