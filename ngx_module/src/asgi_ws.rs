//! One ASGI WebSocket on nginx's side. Before the app accepts, it is an HTTP request (a denial
//! goes out through its [`Stream`]). At the accept nginx sends the 101 (its header filter adds
//! `Connection: upgrade`), the request stops being HTTP (no keep-alive), and the connection's
//! bytes are moved with `c->recv`/`c->send` on the event loop and framed by the core's
//! [`WsCodec`], as `ngx_http_upstream_upgrade` does for proxied WebSockets. Both directions are
//! bounded by `wsgi_stream_buffer`: past it the app's `send` awaits, and nginx stops reading
//! the client until the app has taken its messages. At worker exit every open WebSocket is sent
//! a close frame with code 1001. Open sockets are pinged every `asgi_websocket_ping_interval`
//! and closed with 1001 after `asgi_websocket_idle_timeout` without a byte from the client
//! (pongs count), on nginx timers. Until the app accepts or denies it, `wsgi_read_timeout`
//! bounds the handshake as it bounds an HTTP response.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use nginx_sys::{
    ngx_event_handler_pt, ngx_event_t, ngx_handle_read_event, ngx_handle_write_event,
    ngx_http_event_handler_pt, ngx_http_output_filter, ngx_http_request_t, ngx_http_send_special,
    ngx_int_t, ngx_msec_t, ngx_tcp_nodelay, NGX_AGAIN, NGX_ERROR, NGX_HTTP_FLUSH, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx_wsgi::asgi::{ws_deflate, HttpEnd, TaskWatch, WsCodec, WsIncoming, WsOutgoing, WsServer};
use ngx_wsgi::{Chunk, ClientGone, ResponseHead};

use crate::ffi::{guard, timer, LoopRequest};
use crate::notify::Pump;
use crate::stream::Stream;

/// How long a closing WebSocket waits for the client's close frame.
const CLOSE_WAIT_MS: ngx_msec_t = 5000;

/// The output buffer a socket keeps between messages; a larger one is freed once sent.
const OUTPUT_KEPT: usize = 64 * 1024;

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
    /// move or grow until they are all sent (frames made meanwhile go to the codec's). OpenSSL
    /// wants a write that would block retried from the same address (nginx does not set
    /// SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER), and the codec's vector may move as it grows.
    sending: Vec<u8>,
    want_room: bool,
    /// The app is done (its end), when it is.
    app_end: Option<HttpEnd>,
    /// The client went away (or writing to it failed).
    gone: bool,
    scheduled: bool,
    /// Told to close with 1001 (worker exit).
    told_to_go: bool,
    /// The server's own close (1001) is queued: the app's messages after it would be dropped.
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
        // At each check while the worker exits: one accepted after the first is told too.
        crate::inflight::while_exiting(close_all_for_exit);
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

    /// The app neither accepted nor denied in time: the connection lets go of its request,
    /// which the request flow answers (a 504, or a cut denial) and finalizes; what the app
    /// does later is ignored.
    fn handshake_due(&self) {
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

    /// The client went away before the accept (noticed by the request's read handler).
    pub(crate) fn client_gone(&self) {
        self.lock().gone = true;
        self.stream.client_gone();
        (self.wake)();
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
    unsafe fn io(&self, st: &mut State, r: *mut ngx_http_request_t) {
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
                    let n = send(c, st.sending.as_mut_ptr(), st.sending.len());
                    if n > 0 {
                        st.sending.drain(..n as usize);
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
                st.unsent = st.sending.len() + out.len();
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

    /// After our close frame: the client has CLOSE_WAIT_MS to answer, counted from the last
    /// bytes it took (`progressed`: some just went out). What was queued before the close frame
    /// goes out first, however slowly the client reads; only a client that stops taking bytes,
    /// or does not answer once all is sent, is dropped (RFC 6455 7.1.1 counts from the frame
    /// sent).
    unsafe fn arm_close_timer(&self, progressed: bool) {
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
    unsafe fn rearm(
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

    /// The 101, the switch to frames, and the bytes the client sent after its handshake.
    unsafe fn handshake(&self, st: &mut State, r: *mut ngx_http_request_t, mut head: ResponseHead) {
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

    /// Tells an open connection to close with 1001 (worker exit).
    fn going_away(&self) {
        let mut st = self.lock();
        if st.phase == Phase::Open
            && !st.told_to_go
            && st.codec.as_ref().is_some_and(WsCodec::can_send)
        {
            st.told_to_go = true;
            st.closing = true;
            st.outgoing.push_back(WsOutgoing::Close {
                code: 1001,
                reason: "the server is going away".into(),
            });
            self.schedule(&mut st);
        }
    }
}

/// Worker exit: every open WebSocket gets a close frame with 1001.
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

pub(crate) unsafe extern "C" fn handshake_due(ev: *mut ngx_event_t) {
    guard("the websocket handshake timer", (), || {
        // SAFETY: as in ping_due.
        unsafe { (*((*ev).data as *const AsgiWs)).handshake_due() }
    })
}

unsafe extern "C" fn ping_due(ev: *mut ngx_event_t) {
    guard("the websocket ping timer", (), || {
        // SAFETY: the event's data is its connection, alive while the timer is set (see
        // close_timed_out).
        unsafe { (*((*ev).data as *const AsgiWs)).ping_due() }
    })
}

unsafe extern "C" fn idle_due(ev: *mut ngx_event_t) {
    guard("the websocket idle timer", (), || {
        // SAFETY: as in ping_due.
        unsafe { (*((*ev).data as *const AsgiWs)).idle_due() }
    })
}

unsafe extern "C" fn close_timed_out(ev: *mut ngx_event_t) {
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
        // A close from the client, or the server's own 1001 (queued, or sent, when the codec
        // refuses messages), ends what the app may send.
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
