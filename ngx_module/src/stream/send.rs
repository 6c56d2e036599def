//! The event loop's side of a stream: the head and the pieces handed to nginx's output filters,
//! what nginx has sent freed, the write event armed while output waits, and the client's going
//! noticed.

use nginx_sys::{
    ngx_add_timer, ngx_chain_get_free_buf, ngx_chain_t, ngx_chain_update_chains, ngx_del_timer,
    ngx_handle_write_event, ngx_http_output_filter, ngx_http_request_t, ngx_http_send_special,
    ngx_int_t, NGX_ERROR, NGX_HTTP_LAST, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use super::{weight, Locked, State, Stream};
use crate::ffi::module;

impl Stream {
    /// Hands the head and the pending pieces to nginx, then frees what nginx has sent. The lock
    /// is let go while nginx writes the body (the head's filters run under it), so that the
    /// app's side is not held up by that system call: meanwhile it only adds pieces (and
    /// schedules another pass), asks for room or waits for it; the chains and buffers are the
    /// event loop's alone, and nothing in nginx's output filters calls back into the stream.
    pub(super) unsafe fn send_pending<'a>(
        &'a self,
        mut guard: Locked<'a>,
        r: *mut ngx_http_request_t,
    ) -> Locked<'a> {
        let st = &mut *guard;
        if self.is_cancelled() {
            return guard;
        }
        // SAFETY: `r` is live on the event loop (callers' contract).
        unsafe {
            if let Some(head) = st.head.take() {
                st.head_sent = true;
                if (*r).reading_body() == 0 {
                    (*r).read_event_handler = self.events.readable;
                }
                (*r).write_event_handler = self.events.writable;
                // A body still arriving (wsgi_request_buffering off) that the app may leave
                // unread makes nginx close the connection after the response: the head must not
                // promise keep-alive (a client's next request on it would be lost). As for a
                // whole response (response::send).
                if (*r).reading_body() != 0 {
                    (*r).set_keepalive(0);
                }
                st.body_left = head.content_length;
                let rc = crate::response::send_head(r, &head, head.content_length);
                if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
                    self.cancel(st, true);
                    return guard;
                }
                st.discard = (*r).header_only() != 0;
            }
            let mut out: *mut ngx_chain_t = std::ptr::null_mut();
            let mut last: *mut *mut ngx_chain_t = &mut out;
            let mut discarded = false;
            while let Some(data) = st.pending.pop_front() {
                if data.is_empty() {
                    // A head without body bytes (ASGI's empty http.response.body).
                    continue;
                }
                if st.discard {
                    st.unsent -= weight(&data);
                    discarded = true;
                    continue;
                }
                let cl = ngx_chain_get_free_buf((*r).pool, &mut st.free);
                if cl.is_null() {
                    self.cancel(st, true);
                    return guard;
                }
                if let Some(left) = st.body_left.as_mut() {
                    *left = left.saturating_sub(data.len() as u64);
                }
                let b = (*cl).buf;
                std::ptr::write_bytes(b, 0, 1);
                let start = data.as_ptr().cast_mut();
                (*b).start = start;
                (*b).pos = start;
                (*b).last = start.add(data.len());
                (*b).end = (*b).last;
                (*b).set_memory(1);
                (*b).set_flush(1);
                (*b).tag = module() as *const _ as *mut _;
                st.in_nginx.push_back((data, b));
                (*cl).next = std::ptr::null_mut();
                *last = cl;
                last = &mut (*cl).next;
            }
            if discarded {
                self.notify_room(st);
            }
            if std::mem::take(&mut st.flush_head) && out.is_null() && !st.discard && st.head_sent {
                // nginx's write filter would hold a head without body bytes back
                // (postpone_output) until some come, which may be much later.
                let cl = ngx_chain_get_free_buf((*r).pool, &mut st.free);
                if cl.is_null() {
                    self.cancel(st, true);
                    return guard;
                }
                std::ptr::write_bytes((*cl).buf, 0, 1);
                (*(*cl).buf).set_flush(1);
                (*(*cl).buf).tag = module() as *const _ as *mut _;
                (*cl).next = std::ptr::null_mut();
                out = cl;
            }
            if !out.is_null() {
                drop(guard);
                let rc = ngx_http_output_filter(r, out);
                guard = self.lock();
                let st = &mut *guard;
                if rc == NGX_ERROR as ngx_int_t {
                    self.cancel(st, true);
                }
                ngx_chain_update_chains(
                    (*r).pool,
                    &mut st.free,
                    &mut st.busy,
                    &mut out,
                    module() as *const _ as *mut _,
                );
            }
            // Pieces the app added while nginx wrote go first: their pass comes (scheduled).
            if guard.end_due
                && !guard.ended
                && !self.is_cancelled()
                && guard.head_sent
                && guard.pending.is_empty()
            {
                guard.ended = true;
                if (*r).header_only() == 0 {
                    drop(guard);
                    let rc = ngx_http_send_special(r, NGX_HTTP_LAST as usize);
                    guard = self.lock();
                    if rc == NGX_ERROR as ngx_int_t {
                        self.cancel(&mut guard, true);
                    }
                }
            }
            self.reclaim(&mut guard);
            self.wait_for_writable(&mut guard, r);
        }
        guard
    }

    /// Frees the pieces nginx has finished with and lets a waiting producer go on.
    pub(super) fn reclaim(&self, st: &mut State) {
        let mut freed = 0;
        while let Some(&(_, b)) = st.in_nginx.front() {
            // SAFETY: the buffer lives in the request's pool, which outlives this stream's use.
            if unsafe { (*b).pos != (*b).last } {
                break;
            }
            freed += st.in_nginx.pop_front().map_or(0, |(data, _)| weight(&data));
        }
        if freed > 0 {
            st.unsent -= freed;
            self.notify_room(st);
        }
    }

    /// Arms the write event (and `send_timeout`) while nginx still holds unsent output.
    pub(super) unsafe fn wait_for_writable(&self, st: &mut State, r: *mut ngx_http_request_t) {
        // SAFETY: `r` and its connection are live on the event loop.
        unsafe {
            let c = (*r).connection;
            if (*c).error() != 0 {
                self.cancel(st, false);
                return;
            }
            let wev = (*c).write;
            let buffered = (*r).buffered() != 0 || (*c).buffered() != 0;
            if !buffered {
                // A `delayed` event's timer is limit_rate's, which wakes the writer again.
                if (*wev).timer_set() != 0 && (*wev).delayed() == 0 {
                    ngx_del_timer(wev);
                }
                return;
            }
            let clcf = NgxHttpCoreModule::location_conf(&*r).expect("core location configuration");
            if (*wev).delayed() == 0 {
                ngx_add_timer(wev, clcf.send_timeout);
            }
            if ngx_handle_write_event(wev, clcf.send_lowat) != NGX_OK as ngx_int_t {
                self.cancel(st, true);
            }
        }
    }

    /// The client's socket can take more: continues sending and frees what went out.
    ///
    /// # Safety
    /// Event-loop thread; `r` is this stream's live request.
    pub(crate) unsafe fn on_writable(&self, r: *mut ngx_http_request_t) {
        let mut st = self.lock();
        if st.request.0.is_null() {
            return;
        }
        // SAFETY: per the function contract.
        unsafe {
            let c = (*r).connection;
            let wev = (*c).write;
            if (*wev).timedout() != 0 {
                // send_timeout: the client stopped reading. Said as nginx's own writer says it
                // (a format without conversions: no variadic arguments to pass).
                (*wev).set_timedout(0);
                (*c).set_timedout(1);
                if (*(*c).log).log_level >= nginx_sys::NGX_LOG_INFO as usize {
                    nginx_sys::ngx_log_error_core(
                        nginx_sys::NGX_LOG_INFO as usize,
                        (*c).log,
                        libc::ETIMEDOUT,
                        c"client timed out".as_ptr(),
                    );
                }
                self.cancel(&mut st, true);
                return;
            }
            if (*wev).delayed() == 0 {
                // Unlocked while nginx writes, as in `send_pending`.
                drop(st);
                let rc = ngx_http_output_filter(r, std::ptr::null_mut());
                st = self.lock();
                if rc == NGX_ERROR as ngx_int_t {
                    self.cancel(&mut st, true);
                    return;
                }
                let mut none: *mut ngx_chain_t = std::ptr::null_mut();
                let st = &mut *st;
                ngx_chain_update_chains(
                    (*r).pool,
                    &mut st.free,
                    &mut st.busy,
                    &mut none,
                    module() as *const _ as *mut _,
                );
                self.reclaim(st);
            }
            self.wait_for_writable(&mut st, r);
            if st.ended_by_server {
                self.shut_once_sent(&mut st, r);
            }
        }
    }

    /// Notices a client that closes its connection while the app streams (nothing else reads
    /// the connection meanwhile).
    ///
    /// # Safety
    /// Event-loop thread; `r` is this stream's live request.
    pub(crate) unsafe fn on_readable(&self, r: *mut ngx_http_request_t) {
        // SAFETY: per the function contract.
        unsafe {
            if self.stop_watching_if_served(r) {
                return;
            }
            if crate::client_watch::client_left(r) {
                self.client_gone();
            }
        }
    }

    /// Stops watching a client that has the whole response (true): one that closes now, while
    /// a WSGI app's close() runs, waits for nothing more and is not "gone" (nginx's test would
    /// log a premature close). Its next request, if it sent one, waits in the socket for the
    /// request's end. (Not for ASGI: an app that sent its Content-Length's bytes and awaits
    /// receive() before its closing message is told of the client's going, as by uvicorn.)
    ///
    /// # Safety
    /// Event-loop thread, for the request's read event; `r` is this stream's live request.
    unsafe fn stop_watching_if_served(&self, r: *mut ngx_http_request_t) -> bool {
        // SAFETY: per the function contract.
        unsafe {
            if !self.response_out(r) {
                return false;
            }
            (*r).read_event_handler = Some(nginx_sys::ngx_http_block_reading);
            nginx_sys::ngx_http_block_reading(r);
        }
        true
    }

    /// Whether nginx has written the whole response to the client: ended, or its Content-Length
    /// reached (the app's close() may still run before its end goes out).
    ///
    /// # Safety
    /// Event-loop thread; `r` is this stream's live request.
    unsafe fn response_out(&self, r: *mut ngx_http_request_t) -> bool {
        let st = self.lock();
        // SAFETY: per the function contract.
        unsafe {
            (st.ended || st.body_left == Some(0))
                && st.unsent == 0
                && (*r).buffered() == 0
                && (*(*r).connection).buffered() == 0
        }
    }
}
