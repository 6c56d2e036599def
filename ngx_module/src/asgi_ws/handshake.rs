//! The handshake's end: the 101 and the switch to frames when the app accepts, or the request
//! let go when the app takes too long or was never started.

use nginx_sys::{
    ngx_http_request_t, ngx_http_send_special, ngx_int_t, ngx_tcp_nodelay, NGX_ERROR,
    NGX_HTTP_FLUSH, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx_wsgi::asgi::{ws_deflate, WsCodec};
use ngx_wsgi::ResponseHead;

use crate::ffi::{timer, LoopRequest};

use super::timers::{idle_due, ping_due};
use super::{AsgiWs, Phase, State, OPEN};

impl AsgiWs {
    /// The app neither accepted nor denied in time: the connection lets go of its request,
    /// which the request flow answers (a 504, or a cut denial) and finalizes; what the app
    /// does later is ignored.
    pub(super) fn handshake_due(&self) {
        // Its own reference: answering the request frees the pool that holds the request's.
        let Some(_keep) = self.me.upgrade() else {
            return;
        };
        let Some(r) = self.let_go_in_handshake() else {
            return;
        };
        // SAFETY: on the event loop; the request was live until this, its answer.
        unsafe { (self.hooks.on_deadline)(r, self) };
    }

    /// Lets go of the request while the app has neither accepted nor denied, for the request
    /// flow to answer it: None when the handshake is over, or its end on its way to the pump.
    fn let_go_in_handshake(&self) -> Option<*mut ngx_http_request_t> {
        let mut st = self.lock();
        if st.phase != Phase::Handshake || st.request.0.is_null() || st.app_end.is_some() {
            return None;
        }
        st.phase = Phase::Over;
        st.gone = true;
        Some(std::mem::replace(&mut st.request, LoopRequest::none()).0)
    }

    /// Ends a handshake whose app was never started (the loop gave it up): the request it held,
    /// for the request flow to end, its time to accept or deny no longer counting.
    ///
    /// # Safety
    /// Event loop.
    pub(crate) unsafe fn end_unstarted(&self) -> Option<*mut ngx_http_request_t> {
        let r = self.let_go_in_handshake()?;
        // SAFETY: per the function contract; the timer is this connection's.
        unsafe { timer::disarm(&mut *self.handshake_timer.get()) };
        Some(r)
    }

    /// The 101, the switch to frames, and the bytes the client sent after its handshake.
    pub(super) unsafe fn handshake(
        &self,
        st: &mut State,
        r: *mut ngx_http_request_t,
        mut head: ResponseHead,
    ) {
        // SAFETY: `r` is live on the event loop (callers' contract).
        unsafe {
            let deflate = if self.settings.compression {
                let mut offers = Vec::new();
                crate::request_info::for_each_header(
                    &(*r).headers_in.headers.part,
                    |name, value| {
                        if name.eq_ignore_ascii_case(b"sec-websocket-extensions") {
                            if !offers.is_empty() {
                                offers.push(b',');
                            }
                            offers.extend_from_slice(value);
                        }
                    },
                );
                ws_deflate::negotiate(&offers)
            } else {
                None
            };
            if let Some((_, response)) = &deflate {
                head.push_header(b"Sec-WebSocket-Extensions", response.as_bytes());
            }
            (*r).set_keepalive(0);
            let rc = crate::response::send_head(r, &head, None);
            if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
                st.gone = true;
                st.phase = Phase::Over;
                return;
            }
            if ngx_http_send_special(r, NGX_HTTP_FLUSH as usize) == NGX_ERROR as ngx_int_t {
                st.gone = true;
                st.phase = Phase::Over;
                return;
            }
            let c = (*r).connection;
            let clcf = NgxHttpCoreModule::location_conf(&*r).expect("core location configuration");
            if clcf.tcp_nodelay != 0 {
                ngx_tcp_nodelay(c);
            }
            timer::disarm(&mut *self.handshake_timer.get());
            (*r).read_event_handler = self.hooks.on_io;
            (*r).write_event_handler = self.hooks.on_io;
            let mut codec = WsCodec::new(self.settings.max_message);
            if let Some((settled, _)) = deflate {
                codec = codec.compressed(settled);
            }
            // Frames the client sent right behind its handshake.
            let hin = (*r).header_in;
            if !hin.is_null() && (*hin).last > (*hin).pos {
                let len = (*hin).last.offset_from((*hin).pos) as usize;
                let early = std::slice::from_raw_parts((*hin).pos, len);
                for m in codec.feed_within(early, false, self.settings.buffer) {
                    st.incoming_bytes += m.cost();
                    st.incoming.push_back(m);
                }
                st.reading_paused = st.incoming_bytes >= self.settings.buffer || codec.held_back();
                (*hin).pos = (*hin).last;
                st.wake_due |= !st.incoming.is_empty();
            }
            st.codec = Some(codec);
            st.phase = Phase::Open;
            self.rearm(&self.ping_timer, ping_due, self.settings.ping_interval);
            self.rearm(&self.idle_timer, idle_due, self.settings.idle_timeout);
            OPEN.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.me.clone());
        }
    }
}
