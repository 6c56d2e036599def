//! A WebSocket's nginx timers: the app's time to accept, the keepalive ping, the idle timeout
//! and the client's time to answer a close.

use std::cell::UnsafeCell;

use nginx_sys::{ngx_event_handler_pt, ngx_event_t, ngx_msec_t};
use ngx_wsgi::asgi::{WsCodec, WsOutgoing};

use crate::ffi::{guard, timer};
use crate::notify::Pump;

use super::{AsgiWs, Phase};

/// How long a closing WebSocket waits for the client's close frame.
const CLOSE_WAIT_MS: ngx_msec_t = 5000;

impl AsgiWs {
    /// Starts the app's time to accept or deny (`wsgi_read_timeout`; none for 0).
    ///
    /// # Safety
    /// Event loop, once the handshake was handed to the app.
    pub(crate) unsafe fn start_deadline(&self) {
        // SAFETY: per the function contract; the timer is disarmed when the connection ends.
        unsafe {
            self.rearm(
                &self.handshake_timer,
                handshake_due,
                self.settings.handshake_timeout,
            )
        };
    }

    /// After our close frame: the client has CLOSE_WAIT_MS to answer, counted from the last
    /// bytes it took (`progressed`: some just went out). What was queued before the close frame
    /// goes out first, however slowly the client reads; only a client that stops taking bytes,
    /// or does not answer once all is sent, is dropped (RFC 6455 7.1.1 counts from the frame
    /// sent).
    pub(super) unsafe fn arm_close_timer(&self, progressed: bool) {
        // SAFETY: event loop only; the event lives as long as this connection.
        unsafe {
            if progressed || (*self.close_timer.get()).timer_set() == 0 {
                self.rearm(&self.close_timer, close_timed_out, CLOSE_WAIT_MS);
            }
        }
    }

    /// (Re)starts one of this connection's timers: `handler` in `ms` (never for 0).
    ///
    /// # Safety
    /// Event loop; `event` is one of this connection's timers, disarmed in [`Pump::pump`] when
    /// the connection ends.
    pub(super) unsafe fn rearm(
        &self,
        event: &UnsafeCell<ngx_event_t>,
        handler: unsafe extern "C" fn(*mut ngx_event_t),
        ms: ngx_msec_t,
    ) {
        let handler: ngx_event_handler_pt = Some(handler);
        // SAFETY: per the function contract; the cycle's log outlives the connection, and a
        // timer already set is moved (nginx's ngx_add_timer).
        unsafe {
            timer::arm(
                &mut *event.get(),
                handler,
                (self as *const AsgiWs).cast_mut().cast(),
                (*nginx_sys::ngx_cycle).log,
                ms,
            )
        };
    }

    /// The keepalive ping is due: sends it and plans the next.
    fn ping_due(&self) {
        {
            let mut st = self.lock();
            if st.phase != Phase::Open {
                return;
            }
            if let Some(codec) = st.codec.as_mut() {
                codec.ping(b"");
            }
            // SAFETY: timers fire on the event loop; the connection is open.
            unsafe { self.rearm(&self.ping_timer, ping_due, self.settings.ping_interval) };
        }
        // SAFETY: on the event loop.
        unsafe { self.pump() };
    }

    /// The client sent nothing for `asgi_websocket_idle_timeout`: it is closed with 1001 (the
    /// server ends the connection, not an error of its own: 1011 would say one), and gets
    /// CLOSE_WAIT_MS to answer; a dead peer is then dropped, and the app is told 1006.
    fn idle_due(&self) {
        {
            let mut st = self.lock();
            if st.phase != Phase::Open {
                return;
            }
            if st.reading_paused {
                // Not read because the app is behind: the client is not the idle one.
                // SAFETY: timers fire on the event loop; the connection is open.
                unsafe { self.rearm(&self.idle_timer, idle_due, self.settings.idle_timeout) };
                return;
            }
            if st.codec.as_ref().is_some_and(WsCodec::can_send) {
                st.closing = true;
                st.outgoing.push_back(WsOutgoing::Close {
                    code: 1001,
                    reason: "idle timeout".into(),
                });
            }
        }
        // SAFETY: on the event loop.
        unsafe { self.pump() };
    }
}

pub(crate) unsafe extern "C" fn handshake_due(ev: *mut ngx_event_t) {
    guard("the websocket handshake timer", (), || {
        // SAFETY: as in ping_due.
        unsafe { (*((*ev).data as *const AsgiWs)).handshake_due() }
    })
}

pub(super) unsafe extern "C" fn ping_due(ev: *mut ngx_event_t) {
    guard("the websocket ping timer", (), || {
        // SAFETY: the event's data is its connection, alive while the timer is set (see
        // close_timed_out).
        unsafe { (*((*ev).data as *const AsgiWs)).ping_due() }
    })
}

pub(super) unsafe extern "C" fn idle_due(ev: *mut ngx_event_t) {
    guard("the websocket idle timer", (), || {
        // SAFETY: as in ping_due.
        unsafe { (*((*ev).data as *const AsgiWs)).idle_due() }
    })
}

pub(super) unsafe extern "C" fn close_timed_out(ev: *mut ngx_event_t) {
    guard("the websocket close timer", (), || {
        // SAFETY: the event's data is its connection, alive while its request is (the request's
        // pool holds it, and the timer is removed when the request ends).
        unsafe {
            let ws = &*((*ev).data as *const AsgiWs);
            ws.lock().gone = true;
            ws.pump();
        }
    })
}
