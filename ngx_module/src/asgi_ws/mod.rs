//! One ASGI WebSocket on nginx's side. Before the app accepts, it is an HTTP request (a denial
//! goes out through its [`Stream`]). At the accept nginx sends the 101 (its header filter adds
//! `Connection: upgrade`), the request stops being HTTP (no keep-alive), and the connection's
//! bytes are moved with `c->recv`/`c->send` on the event loop and framed by the core's
//! [`WsCodec`], as `ngx_http_upstream_upgrade` does for proxied WebSockets. Both directions are
//! bounded by `wsgi_stream_buffer`: past it the app's `send` awaits, and nginx stops reading
//! the client until the app has taken its messages. At worker exit, or as soon as a reload's
//! drain stops its accepting, every open WebSocket is sent a close frame with code 1001 (or
//! 1012: `asgi_websocket_exit_code`). Open sockets are pinged
//! every `asgi_websocket_ping_interval` and closed with 1001 after
//! `asgi_websocket_idle_timeout` without a byte from the client
//! (pongs count), on nginx timers. Until the app accepts or denies it, `wsgi_read_timeout`
//! bounds the handshake as it bounds an HTTP response.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use nginx_sys::{ngx_event_t, ngx_http_event_handler_pt, ngx_http_request_t, ngx_msec_t};
use ngx_wsgi::asgi::{HttpEnd, TaskWatch, WsCodec, WsIncoming, WsOutgoing, WsServer};
use ngx_wsgi::{Chunk, ClientGone, ResponseHead};

use crate::ffi::{timer, LoopRequest};
use crate::notify::Pump;
use crate::stream::Stream;

mod handshake;
mod io;
mod timers;

pub(crate) use timers::handshake_due;

/// A WebSocket's bounds and timers, from its location.
pub(crate) struct WsSettings {
    /// `wsgi_stream_buffer`: bytes waiting either way before the other side is paused.
    pub buffer: usize,
    /// The largest message the client may send.
    pub max_message: usize,
    /// `asgi_websocket_ping_interval` (0: no pings).
    pub ping_interval: ngx_msec_t,
    /// `asgi_websocket_idle_timeout` (0: none).
    pub idle_timeout: ngx_msec_t,
    /// `wsgi_read_timeout` (0: none): the app's time to accept or deny.
    pub handshake_timeout: ngx_msec_t,
    /// `asgi_websocket_compression`: `permessage-deflate` when the client offers it.
    pub compression: bool,
    /// `asgi_websocket_exit_code`: the close code at the worker's exit (1001 or 1012).
    pub exit_code: u16,
}

/// What the event loop does when the connection is over: `upgraded` once the 101 went out.
pub(crate) type OnWsEnd = unsafe fn(*mut ngx_http_request_t, &AsgiWs, HttpEnd, bool);

/// What the event loop does when the app has neither accepted nor denied in time: answers and
/// finalizes the request, which the connection no longer holds.
pub(crate) type OnWsDeadline = unsafe fn(*mut ngx_http_request_t, &AsgiWs);

/// The request flow's part in a WebSocket's life.
pub(crate) struct WsHooks {
    pub on_end: OnWsEnd,
    pub on_deadline: OnWsDeadline,
    /// The request's read and write handler once upgraded: it calls [`AsgiWs::on_io`].
    pub on_io: ngx_http_event_handler_pt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Before the accept (or a denial under way).
    Handshake,
    /// The app accepted: the 101 goes out at the next pump.
    Accepting(ResponseHead),
    Open,
    /// The connection is over (nginx's side is finished or about to be).
    Over,
}

struct State {
    request: LoopRequest,
    phase: Phase,
    codec: Option<WsCodec>,
    incoming: VecDeque<WsIncoming>,
    incoming_bytes: usize,
    /// nginx stopped reading the client: the app has not taken what came.
    reading_paused: bool,
    outgoing: VecDeque<WsOutgoing>,
    /// Bytes the app sent that the client has not taken yet.
    unsent: usize,
    /// Framed bytes being written, taken whole from the codec's output: the vector does not
    /// move, grow or change until they are all sent (frames made meanwhile go to the codec's).
    /// OpenSSL wants a write that would block retried from the same address (nginx does not set
    /// SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER), and the codec's vector may move as it grows.
    sending: Vec<u8>,
    /// How many of `sending`'s bytes went out.
    sent: usize,
    want_room: bool,
    /// The app is done (its end), when it is.
    app_end: Option<HttpEnd>,
    /// The client went away (or writing to it failed).
    gone: bool,
    scheduled: bool,
    /// Told to close with the exit code (worker exit).
    told_to_go: bool,
    /// The server's own close (its exit code) is queued: the app's messages after it would be
    /// dropped.
    closing: bool,
    /// The app's task is to be woken once the loop lets go of this state (a task woken with
    /// the lock held would run straight into it).
    wake_due: bool,
}

// SAFETY: the request pointer is only dereferenced on the event loop.
unsafe impl Send for State {}

pub(crate) struct AsgiWs {
    pub stream: Arc<Stream>,
    pub posted_at: Instant,
    state: Mutex<State>,
    settings: WsSettings,
    wake: Arc<dyn Fn() + Send + Sync>,
    hooks: WsHooks,
    /// Its place in the event loop's queue, and its task once started.
    pub watch: Arc<TaskWatch>,
    /// How a handshake timeout's log entry begins (only with a timeout).
    pub label: String,
    /// The end of the app's time to accept or deny (event loop only, like the three below).
    handshake_timer: UnsafeCell<ngx_event_t>,
    /// The wait for the client's close frame.
    close_timer: UnsafeCell<ngx_event_t>,
    /// The next keepalive ping.
    ping_timer: UnsafeCell<ngx_event_t>,
    /// The end of the client's allowed silence.
    idle_timer: UnsafeCell<ngx_event_t>,
    me: Weak<AsgiWs>,
}

// SAFETY: the timers are only touched on the event loop; the rest is behind the mutex or
// immutable.
unsafe impl Sync for AsgiWs {}
// SAFETY: as above.
unsafe impl Send for AsgiWs {}

/// The open WebSockets of this worker, told to close at exit.
static OPEN: Mutex<Vec<Weak<AsgiWs>>> = Mutex::new(Vec::new());

impl AsgiWs {
    pub(crate) fn new(
        r: *mut ngx_http_request_t,
        stream: Arc<Stream>,
        settings: WsSettings,
        wake: Arc<dyn Fn() + Send + Sync>,
        hooks: WsHooks,
        label: String,
    ) -> Arc<AsgiWs> {
        // At each check while the worker exits: one accepted after the first is told too. And
        // as soon as a drain sends the worker's clients to other workers: a reload's drain
        // (up to 2 s) would otherwise keep them on the old code that long. Once, at the first.
        static TOLD_AT_EXIT: std::sync::Once = std::sync::Once::new();
        TOLD_AT_EXIT.call_once(|| {
            crate::inflight::while_exiting(close_all_for_exit);
            crate::exit_drain::when_sending_clients_elsewhere(crate::exit_drain::LongLived {
                tell: close_all_for_exit,
                count: open_count,
            });
        });
        Arc::new_cyclic(|me| AsgiWs {
            stream,
            posted_at: Instant::now(),
            state: Mutex::new(State {
                request: LoopRequest(r),
                phase: Phase::Handshake,
                codec: None,
                incoming: VecDeque::new(),
                incoming_bytes: 0,
                reading_paused: false,
                outgoing: VecDeque::new(),
                unsent: 0,
                sending: Vec::new(),
                sent: 0,
                want_room: false,
                app_end: None,
                gone: false,
                scheduled: false,
                told_to_go: false,
                closing: false,
                wake_due: false,
            }),
            settings,
            wake,
            hooks,
            watch: Arc::new(TaskWatch::default()),
            label,
            // SAFETY: an all-zero ngx_event_t is nginx's own initial state for an event.
            handshake_timer: UnsafeCell::new(unsafe { std::mem::zeroed() }),
            // SAFETY: as above.
            close_timer: UnsafeCell::new(unsafe { std::mem::zeroed() }),
            // SAFETY: as above.
            ping_timer: UnsafeCell::new(unsafe { std::mem::zeroed() }),
            // SAFETY: as above.
            idle_timer: UnsafeCell::new(unsafe { std::mem::zeroed() }),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn schedule(&self, st: &mut State) {
        if !st.scheduled {
            st.scheduled = true;
            if let Some(me) = self.me.upgrade() {
                crate::notify::schedule(me);
            }
        }
    }

    /// The client went away before the accept (noticed by the request's read handler).
    pub(crate) fn client_gone(&self) {
        self.lock().gone = true;
        self.stream.client_gone();
        (self.wake)();
    }

    /// Tells an open connection to close with its exit code (worker exit or drain).
    fn going_away(&self) {
        let mut st = self.lock();
        if st.phase == Phase::Open
            && !st.told_to_go
            && st.codec.as_ref().is_some_and(WsCodec::can_send)
        {
            st.told_to_go = true;
            st.closing = true;
            let code = self.settings.exit_code;
            let reason = if code == crate::conf::asgi::SERVICE_RESTART {
                "the server is restarting"
            } else {
                "the server is going away"
            };
            st.outgoing.push_back(WsOutgoing::Close {
                code,
                reason: reason.into(),
            });
            self.schedule(&mut st);
        }
    }
}

/// How many WebSockets are open.
fn open_count() -> usize {
    OPEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|ws| ws.strong_count() > 0)
        .count()
}

/// Worker exit, or a drain that sends the worker's clients elsewhere: every open WebSocket gets
/// a close frame with its exit code.
fn close_all_for_exit() {
    let open: Vec<Arc<AsgiWs>> = OPEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for ws in open {
        ws.going_away();
    }
}

impl Pump for AsgiWs {
    unsafe fn pump(&self) {
        let Some(_keep) = self.me.upgrade() else {
            return;
        };
        // SAFETY: per the trait's contract (the event loop).
        if unsafe { self.pump_once() } {
            (self.wake)();
        }
    }
}

impl AsgiWs {
    /// The pump's work; says whether the app's task is to be woken (done with the lock
    /// released).
    ///
    /// # Safety
    /// Event loop only.
    unsafe fn pump_once(&self) -> bool {
        let mut st = self.lock();
        st.scheduled = false;
        let r = st.request.0;
        if r.is_null() {
            return std::mem::take(&mut st.wake_due);
        }
        if let Phase::Accepting(head) = st.phase.clone() {
            if st.gone || self.stream.is_cancelled() {
                st.phase = Phase::Over;
                st.gone = true;
            } else {
                // SAFETY: the request is live while `request` is set.
                unsafe { self.handshake(&mut st, r, head) };
            }
        }
        let upgraded = st.codec.is_some();
        match st.phase {
            Phase::Handshake => {
                // A denial (or a failure) ends the request like an HTTP response.
                let wake = std::mem::take(&mut st.wake_due);
                let Some(end) = st.app_end else { return wake };
                st.request = LoopRequest::none();
                drop(st);
                // SAFETY: on the event loop; the timer is this connection's, and the request is
                // live until this, its completion.
                unsafe {
                    timer::disarm(&mut *self.handshake_timer.get());
                    (self.hooks.on_end)(r, self, end, false)
                };
                return wake;
            }
            // SAFETY: the request is live while `request` is set.
            Phase::Open => unsafe { self.io(&mut st, r) },
            _ => {}
        }
        let wake = std::mem::take(&mut st.wake_due);
        if st.phase == Phase::Over {
            st.request = LoopRequest::none();
            let end = if st.gone {
                HttpEnd::ClientGone
            } else {
                HttpEnd::Complete
            };
            drop(st);
            // SAFETY: event loop only; the timers belong to this connection.
            unsafe {
                for ev in [
                    &self.handshake_timer,
                    &self.close_timer,
                    &self.ping_timer,
                    &self.idle_timer,
                ] {
                    timer::disarm(&mut *ev.get());
                }
            }
            OPEN.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|w| !std::ptr::eq(w.as_ptr(), self));
            // SAFETY: on the event loop; the request is live until this, its completion.
            unsafe { (self.hooks.on_end)(r, self, end, upgraded) };
        }
        wake
    }
}

impl WsServer for AsgiWs {
    fn accept(&self, head: ResponseHead) {
        let mut st = self.lock();
        if st.phase == Phase::Handshake {
            st.phase = Phase::Accepting(head);
            self.schedule(&mut st);
        }
    }

    fn room(&self) -> Result<bool, ClientGone> {
        let mut st = self.lock();
        let open = match &st.phase {
            Phase::Accepting(_) => true,
            Phase::Open => st.codec.as_ref().is_some_and(WsCodec::can_send),
            _ => false,
        };
        if st.gone || !open {
            return Err(ClientGone);
        }
        let room = st.unsent < self.settings.buffer;
        if !room {
            st.want_room = true;
        }
        Ok(room)
    }

    fn send(&self, message: WsOutgoing) -> Result<(), ClientGone> {
        let mut st = self.lock();
        // A close from the client, or the server's own exit close (queued, or sent, when the
        // codec refuses messages), ends what the app may send.
        let closing = st.closing || st.codec.as_ref().is_some_and(|c| !c.can_send());
        if st.gone || st.phase == Phase::Over || closing {
            return Err(ClientGone);
        }
        st.unsent += match &message {
            WsOutgoing::Text(t) => t.len(),
            WsOutgoing::Binary(b) => b.len(),
            WsOutgoing::Close { .. } => 0,
        };
        st.outgoing.push_back(message);
        self.schedule(&mut st);
        Ok(())
    }

    fn next(&self) -> Option<WsIncoming> {
        let mut st = self.lock();
        let m = st.incoming.pop_front()?;
        st.incoming_bytes -= m.cost();
        if st.reading_paused && st.incoming_bytes < self.settings.buffer {
            st.reading_paused = false;
            self.schedule(&mut st);
        }
        Some(m)
    }

    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone> {
        self.stream.push_now(head, data)
    }

    fn push_head(&self, head: ResponseHead) -> Result<(), ClientGone> {
        self.stream.push_head_now(head)
    }

    fn http_room(&self) -> Result<bool, ClientGone> {
        self.stream.room()
    }

    fn client_gone(&self) -> bool {
        let st = self.lock();
        st.gone || (st.phase == Phase::Handshake && self.stream.is_cancelled())
    }

    fn finish(&self, end: HttpEnd) {
        let mut st = self.lock();
        if st.app_end.is_none() {
            st.app_end = Some(end);
            self.schedule(&mut st);
        }
    }
}
