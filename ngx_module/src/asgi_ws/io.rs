//! An open WebSocket's bytes: the client's frames read and decoded for the app, the app's
//! messages framed and written, until the socket would block either way.

use nginx_sys::{
    ngx_connection_t, ngx_handle_read_event, ngx_handle_write_event, ngx_http_output_filter,
    ngx_http_request_t, ngx_int_t, NGX_AGAIN, NGX_ERROR, NGX_LOG_ERR, NGX_LOG_INFO, NGX_OK,
};
use ngx_wsgi::asgi::WsIncoming;

use crate::notify::Pump;

use super::timers::idle_due;
use super::{AsgiWs, Phase, State};

/// The output buffer a socket keeps between messages; a larger one is freed once sent.
const OUTPUT_KEPT: usize = 64 * 1024;

impl AsgiWs {
    /// The client's frames failed the connection (closed with `code`): said in the error log
    /// as nginx says it of a request: a message over `client_max_body_size` at `error`, as its
    /// 413, frames that break the protocol at `info`, as its 400s (anything else, the server's
    /// own failure, at `error`).
    fn log_failure(&self, c: *mut ngx_connection_t, code: u16, why: &str) {
        let (level, what) = match code {
            1009 => (
                NGX_LOG_ERR,
                format!(
                    "client sent a WebSocket message over client_max_body_size ({} bytes)",
                    self.settings.max_message
                ),
            ),
            1002 | 1007 => (
                NGX_LOG_INFO,
                "client's WebSocket frames broke the protocol".into(),
            ),
            _ => (NGX_LOG_ERR, "the WebSocket failed".into()),
        };
        // SAFETY: the connection is live on the event loop (the caller's), its log with it.
        let log = unsafe { (*c).log };
        crate::ffi::log::write_log(
            level as usize,
            log,
            &format!("asgi: {what}: {why}; closed with {code}"),
        );
    }

    /// The connection's socket is ready (read or write): moves bytes.
    ///
    /// # Safety
    /// Event loop, from the handlers of this connection's live request.
    pub(crate) unsafe fn on_io(&self) {
        // SAFETY: per the function contract.
        unsafe { self.pump() };
    }

    /// Moves bytes both ways until the socket would block; a connection found over is left in
    /// `Phase::Over` for the pump to end.
    pub(super) unsafe fn io(&self, st: &mut State, r: *mut ngx_http_request_t) {
        // SAFETY: `r` and its connection are live on the event loop (callers' contract).
        unsafe {
            let c = (*r).connection;
            // The 101 itself may still wait in nginx's output.
            if !(*r).out.is_null() {
                if ngx_http_output_filter(r, std::ptr::null_mut()) == NGX_ERROR as ngx_int_t {
                    st.gone = true;
                }
                if !(*r).out.is_null() && !st.gone {
                    ngx_handle_write_event((*c).write, 0);
                    return;
                }
            }
            let Some(codec) = st.codec.as_mut() else {
                return;
            };
            let mut told = false;
            // Bytes went out this time: a closing connection's wait starts again.
            let mut progressed = false;
            let mut buf = [0u8; 16384];
            loop {
                while let Some(m) = st.outgoing.pop_front() {
                    // Refused only when queued before the client's close was read: the app's
                    // next receive() says the connection ended.
                    let _ = codec.send(m);
                }
                let mut blocked = false;
                let mut taken = false;
                while !st.gone {
                    if st.sending.is_empty() {
                        // What the codec framed since: sent from where it stays put (see
                        // `State::sending`), while the codec frames into the other vector.
                        std::mem::swap(&mut st.sending, codec.output());
                    }
                    if st.sending.is_empty() {
                        break;
                    }
                    let Some(send) = (*c).send else { break };
                    let left = st.sending.len() - st.sent;
                    let n = send(c, st.sending.as_mut_ptr().add(st.sent), left);
                    if n > 0 {
                        // Moving the rest to the front would cost a copy of it per write: a
                        // 64 MiB message to a slow reader took 1.66 s of the worker's loop.
                        st.sent += n as usize;
                        if st.sent == st.sending.len() {
                            st.sending.clear();
                            st.sent = 0;
                        }
                        taken = true;
                    } else if n == NGX_AGAIN as isize {
                        blocked = true;
                        break;
                    } else {
                        st.gone = true;
                    }
                }
                if blocked && ngx_handle_write_event((*c).write, 0) != NGX_OK as ngx_int_t {
                    st.gone = true;
                }
                progressed |= taken;
                if taken && blocked {
                    // The client takes what it is sent, however slowly (room came back once
                    // the socket had filled): alive, though its pong waits behind all that.
                    self.rearm(&self.idle_timer, idle_due, self.settings.idle_timeout);
                }
                let out = codec.output();
                st.unsent = st.sending.len() - st.sent + out.len();
                if st.unsent == 0 {
                    // A long-lived socket does not keep the room of its largest message.
                    for v in [&mut st.sending, out] {
                        if v.capacity() > OUTPUT_KEPT {
                            *v = Vec::new();
                        }
                    }
                }
                // A client that does not read what it is sent (pongs, echoes) is not read
                // either: its pings would otherwise grow the output without bound.
                let writes_stalled = blocked && st.unsent >= self.settings.buffer;
                if st.gone || codec.is_terminated() || st.reading_paused || writes_stalled {
                    break;
                }
                // What the app may still be given before reading pauses: compressed messages
                // past it wait, compressed, and the client is not read meanwhile.
                let budget = self.settings.buffer.saturating_sub(st.incoming_bytes);
                let Some(recv) = (*c).recv else { break };
                let (incoming, more) = if codec.held_back() {
                    (codec.feed_within(&[], false, budget), true)
                } else {
                    let n = recv(c, buf.as_mut_ptr(), buf.len());
                    let incoming = if n > 0 {
                        // The client is alive: its silence starts again.
                        self.rearm(&self.idle_timer, idle_due, self.settings.idle_timeout);
                        codec.feed_within(&buf[..n as usize], false, budget)
                    } else if n == NGX_AGAIN as isize {
                        if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
                            st.gone = true;
                        }
                        Vec::new()
                    } else {
                        // 0: the client closed its side; an error: it is gone.
                        if n != 0 {
                            st.gone = true;
                        }
                        codec.feed(&[], true)
                    };
                    (incoming, n > 0)
                };
                if let Some((code, why)) = codec.take_failure() {
                    self.log_failure(c, code, &why);
                }
                for m in incoming {
                    st.incoming_bytes += m.cost();
                    st.incoming.push_back(m);
                    told = true;
                }
                if st.incoming_bytes >= self.settings.buffer || codec.held_back() {
                    st.reading_paused = true;
                }
                // Nothing read, nothing new to frame, and the output sent or waiting for the
                // socket's write event: done until the next event (going round again while a
                // client neither sends nor reads would spin the worker).
                if !more && st.outgoing.is_empty() && (blocked || st.unsent == 0) {
                    break;
                }
            }
            if st.want_room && st.unsent < self.settings.buffer {
                st.want_room = false;
                told = true;
            }
            let closing = !codec.can_send() && !codec.is_terminated();
            let over = st.gone || (codec.is_terminated() && st.unsent == 0);
            if over {
                if !codec.is_terminated() || st.gone {
                    st.incoming.push_back(WsIncoming::Closed {
                        code: 1006,
                        reason: String::new(),
                    });
                }
                st.phase = Phase::Over;
                told = true;
            } else if closing || codec.is_terminated() {
                // Closing, or closed with our last frames still unsent to a client that may
                // have stopped reading: either way it has CLOSE_WAIT_MS to take bytes.
                self.arm_close_timer(progressed);
            }
            st.wake_due |= told;
        }
    }
}
