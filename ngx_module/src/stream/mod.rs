//! Streamed responses: the app's pieces go out while it runs, with a bound on what a request may
//! hold unsent (backpressure), and the app is stopped when the client goes away.
//!
//! The Python thread pushes pieces into the request's [`Stream`] and wakes the event loop
//! through [`crate::notify`]; the loop hands them to nginx's output filters and frees each piece
//! once nginx has sent it. While the unsent bytes exceed the bound, the Python thread waits
//! (without the GIL). The request's read and write handlers, which the request flow installs
//! while a response streams, call [`Stream::on_writable`] and [`Stream::on_readable`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use nginx_sys::{ngx_buf_t, ngx_chain_t, ngx_http_event_handler_pt, ngx_http_request_t};
use ngx_wsgi::{Chunk, ChunkSink, ClientGone, ResponseHead};

use crate::event_streams;
use crate::ffi::LoopRequest;
use crate::response::StreamEnd;

mod deadline;
mod exit;
mod send;

pub(crate) use deadline::{end_if_sent_whole, TimeoutAnswer};

/// The request's event handlers while its response streams: they call back into the stream.
#[derive(Clone, Copy)]
pub(crate) struct ClientEvents {
    /// The client can take more output: calls [`Stream::on_writable`].
    pub writable: ngx_http_event_handler_pt,
    /// Something happened on the client's side: calls [`Stream::on_readable`].
    pub readable: ngx_http_event_handler_pt,
}

struct State {
    /// The head, from the first push until the loop sends it.
    head: Option<ResponseHead>,
    /// Pieces the loop has not handed to nginx yet.
    pending: VecDeque<Chunk>,
    /// Pieces nginx has, with their buffers, in sending order (loop side).
    in_nginx: VecDeque<(Chunk, *mut ngx_buf_t)>,
    free: *mut ngx_chain_t,
    busy: *mut ngx_chain_t,
    /// What is produced and not yet sent by nginx, each piece weighed by [`weight`]: the
    /// backpressure count.
    unsent: usize,
    /// nginx could not send (a failed header or write): finalize with an error.
    failed: bool,
    /// The request answers HEAD (or a bodiless status): pieces are dropped.
    discard: bool,
    head_sent: bool,
    /// A WSGI event stream's head, its app not yet past its first event: not sent (PEP 3333
    /// holds it until the first body byte), but what the stream ends with if the worker exits
    /// meanwhile (see [`ChunkSink::head_known`]).
    exit_head: Option<ResponseHead>,
    /// The head is to leave before any body byte (see [`Stream::push_head_now`]).
    flush_head: bool,
    /// Already in the notifier's ready list.
    scheduled: bool,
    /// A producer that does not block (ASGI) found no room and waits for its waker.
    want_room: bool,
    /// The request, while its task runs; NULL once the completion handler took over.
    request: LoopRequest,
    /// The waker is to fire once the lock is let go (see [`Locked`]).
    wake_due: bool,
    /// Producers blocked in `push` on `room`: a condvar's notify is a system call even with
    /// no one waiting, and most streams (every ASGI one) never have a waiter.
    waiting: usize,
    /// The server ended the response in the app's place (an event stream at worker exit).
    ended_by_server: bool,
    /// ... and shut the connection for writing once all of it was sent.
    shut: bool,
    /// The app's body is whole (a WSGI iterable exhausted, or its Content-Length all came): the
    /// end of the response goes out after the pieces pending, before the app's `close()` returns.
    end_due: bool,
    /// ... and it went out (nginx has the last buffer).
    ended: bool,
    /// The body bytes of the head's Content-Length not yet handed to nginx.
    body_left: Option<u64>,
}

// SAFETY: the buffer and chain pointers belong to the request's pool and are only used on the
// event-loop thread; the Python thread touches only `pending`, `head`, `unsent`, `waiting` and
// the flags.
unsafe impl Send for State {}

/// One request's streamed output, shared by its Python thread and the event loop.
pub(crate) struct Stream {
    state: Mutex<State>,
    /// Stop producing: the client is gone or sending failed. Set under the state's lock (so
    /// that a producer waiting for room sees it when woken), readable without it: the app's side
    /// asks at every message, and the event loop holds the lock while it builds chains, sends
    /// the head and frees what nginx has sent.
    cancelled: AtomicBool,
    room: Condvar,
    /// What a producer that does not block (ASGI) is woken with when it asked for room (or the
    /// stream ends): fired once the lock is let go (see [`Locked`]).
    waker: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    limit: usize,
    events: ClientEvents,
    /// A WSGI event stream, listed in [`crate::event_streams`].
    listed: AtomicBool,
    /// An event stream of this request may be ended cleanly at the worker's exit (see
    /// [`event_streams::resumable`]); one that answers a POST is never listed, and runs on as
    /// any response does.
    resumable: bool,
    /// The app's thread is done with the request (its completion is on the way).
    app_done: AtomicBool,
    /// Where the request runs Python (WSGI): its wait for the next event is ended when the
    /// worker's exit ends its event stream.
    watch: std::sync::OnceLock<Arc<ngx_wsgi::RequestWatch>>,
    me: Weak<Stream>,
}

impl Stream {
    pub(crate) fn new(
        r: *mut ngx_http_request_t,
        limit: usize,
        events: ClientEvents,
    ) -> Arc<Stream> {
        Arc::new_cyclic(|me| Stream {
            state: Mutex::new(State {
                head: None,
                pending: VecDeque::new(),
                in_nginx: VecDeque::new(),
                free: std::ptr::null_mut(),
                busy: std::ptr::null_mut(),
                unsent: 0,
                failed: false,
                discard: false,
                head_sent: false,
                exit_head: None,
                flush_head: false,
                scheduled: false,
                want_room: false,
                request: LoopRequest(r),
                wake_due: false,
                waiting: 0,
                ended_by_server: false,
                shut: false,
                end_due: false,
                ended: false,
                body_left: None,
            }),
            cancelled: AtomicBool::new(false),
            room: Condvar::new(),
            waker: Mutex::new(None),
            limit,
            events,
            listed: AtomicBool::new(false),
            // SAFETY: `r` is the live request the stream is made for, on the event loop.
            resumable: unsafe { event_streams::resumable(r) },
            app_done: AtomicBool::new(false),
            watch: std::sync::OnceLock::new(),
            me: me.clone(),
        })
    }

    /// The WSGI request's watch, for the worker's exit to end its app's wait.
    pub(crate) fn run_by(&self, watch: Arc<ngx_wsgi::RequestWatch>) {
        let _ = self.watch.set(watch);
    }

    /// Whether an event stream of this request is one the worker's exit may end cleanly.
    pub(crate) fn resumable(&self) -> bool {
        self.resumable
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: Some(self.state.lock().unwrap_or_else(|e| e.into_inner())),
            stream: self,
        }
    }
}

/// The stream's state, locked. A waker due (room for an ASGI producer, or the stream's end) fires
/// when this is dropped, after the lock is let go: woken under it, the app's thread would run at
/// once into the lock still held.
struct Locked<'a> {
    guard: Option<MutexGuard<'a, State>>,
    stream: &'a Stream,
}

impl Locked<'_> {
    /// Waits on the condvar for room (the lock let go meanwhile, as `Condvar::wait` does).
    fn wait_for_room(&mut self) {
        let guard = self.guard.take().expect("locked until dropped");
        let guard = self
            .stream
            .room
            .wait(guard)
            .unwrap_or_else(|e| e.into_inner());
        self.guard = Some(guard);
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("locked until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("locked until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let due = self
            .guard
            .as_mut()
            .is_some_and(|st| std::mem::take(&mut st.wake_due));
        self.guard = None;
        if due {
            let wake = self
                .stream
                .waker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(wake) = wake {
                wake();
            }
        }
    }
}

impl crate::notify::Pump for Stream {
    unsafe fn pump(&self) {
        let mut st = self.lock();
        st.scheduled = false;
        let r = st.request.0;
        if !r.is_null() {
            // SAFETY: the request is live while `request` is set (the task is outstanding).
            drop(unsafe { self.send_pending(st, r) });
        }
    }
}

impl Stream {
    fn cancel(&self, st: &mut State, failed: bool) {
        self.cancelled.store(true, Ordering::Release);
        st.failed |= failed;
        st.want_room = true;
        self.notify_room(st);
    }

    /// Lets a producer waiting for room (or for the end) go on.
    fn notify_room(&self, st: &mut State) {
        if st.waiting > 0 {
            self.room.notify_all();
        }
        if std::mem::take(&mut st.want_room) {
            st.wake_due = true;
        }
    }

    /// Sets what a producer that does not block is woken with (room, or the client gone).
    pub(crate) fn set_waker(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    /// Whether a piece may be pushed without blocking; false also arms the waker. Fails once the
    /// client is gone.
    pub(crate) fn room(&self) -> Result<bool, ClientGone> {
        let mut st = self.lock();
        if self.is_cancelled() {
            return Err(ClientGone);
        }
        let room = st.unsent < self.limit;
        if !room {
            st.want_room = true;
        }
        Ok(room)
    }

    /// Whether nginx has sent every byte produced (none is pending or in its buffers).
    pub(crate) fn all_sent(&self) -> bool {
        self.lock().unsent == 0
    }

    /// Whether the stream stopped (the client went away, or sending failed).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// The client went away (noticed by another handler): stop the app's output.
    pub(crate) fn client_gone(&self) {
        let mut st = self.lock();
        self.cancel(&mut st, false);
    }

    /// The task is done: takes the request back for the completion handler, sending what is
    /// still waiting, and says how the streamed part ended.
    ///
    /// # Safety
    /// Event-loop thread; `r` is live.
    pub(crate) unsafe fn finish(&self, r: *mut ngx_http_request_t) -> StreamEnd {
        let mut st = self.lock();
        let held = !std::mem::replace(&mut st.request, LoopRequest::none())
            .0
            .is_null();
        let st = match held {
            // SAFETY: per the function contract.
            true => unsafe {
                let st = self.send_pending(st, r);
                (*r).read_event_handler = Some(nginx_sys::ngx_http_block_reading);
                st
            },
            // Let go of before (`let_go`): the request's handlers are another's now.
            false => st,
        };
        StreamEnd {
            head_sent: st.head_sent,
            cancelled: self.is_cancelled(),
            failed: st.failed,
            ended_by_server: st.ended_by_server,
            ended: st.ended,
        }
    }

    /// The request goes on without this stream while the app still runs (nginx's `error_page`
    /// answers its timeout): the stream lets go of the request and of its read handler, and
    /// [`Stream::finish`] touches neither again.
    ///
    /// # Safety
    /// Event-loop thread; `r` is live.
    pub(crate) unsafe fn let_go(&self, r: *mut ngx_http_request_t) {
        self.lock().request = LoopRequest::none();
        // SAFETY: per the function contract.
        unsafe { (*r).read_event_handler = Some(nginx_sys::ngx_http_block_reading) };
    }

    /// The app's thread is done with the request.
    pub(crate) fn app_returned(&self) {
        self.app_done.store(true, Ordering::Release);
    }
}

/// A WSGI app's stream (ASGI's go through [`Stream::push_now`]).
impl ChunkSink for Stream {
    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone> {
        let mut st = self.lock();
        while st.unsent >= self.limit && !self.is_cancelled() {
            st.waiting += 1;
            st.wait_for_room();
            st.waiting -= 1;
        }
        drop(st);
        let event_stream =
            self.resumable && head.as_ref().is_some_and(ResponseHead::is_event_stream);
        self.push_now(head, data)?;
        // Once its head is with the stream: ended at exit, it goes out with the app's status.
        if event_stream {
            self.list_for_exit();
        }
        Ok(())
    }

    fn head_known(&self, head: &ResponseHead) {
        // A head whose body is not used (nginx answers in the app's place) is no stream.
        let event_stream = self.resumable && head.is_event_stream() && !head.body_unused();
        if !event_stream && !self.listed.load(Ordering::Acquire) {
            return; // most responses: nothing to keep, nothing to take back
        }
        let mut st = self.lock();
        if st.head_sent || st.head.is_some() || self.is_cancelled() || st.ended_by_server {
            return;
        }
        // A later head (start_response again, with exc_info) replaces it, or takes it back.
        st.exit_head = event_stream.then(|| head.clone());
        drop(st);
        if event_stream {
            self.list_for_exit();
        }
    }

    fn ended_by_server(&self) -> bool {
        self.lock().ended_by_server
    }

    fn body_complete(&self) -> bool {
        let mut st = self.lock();
        if self.is_cancelled() || st.ended_by_server || st.end_due {
            return false;
        }
        st.end_due = true;
        self.schedule_pass(st);
        true
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.listed.load(Ordering::Acquire) {
            event_streams::unlist(self as *const _ as usize);
        }
    }
}

impl Stream {
    /// Queues a piece for the loop whatever the count of unsent bytes (a producer that does not
    /// block asks [`Stream::room`] first).
    pub(crate) fn push_now(
        &self,
        head: Option<ResponseHead>,
        data: Chunk,
    ) -> Result<(), ClientGone> {
        self.hand_over(head, data, false)
    }

    /// The head, to leave at once with no body byte yet (ASGI's empty first body message with
    /// more to come: an event stream's client learns of the response before its first event).
    pub(crate) fn push_head_now(&self, head: ResponseHead) -> Result<(), ClientGone> {
        self.hand_over(Some(head), Chunk::from_vec(Vec::new()), true)
    }

    fn hand_over(
        &self,
        head: Option<ResponseHead>,
        data: Chunk,
        flush_head: bool,
    ) -> Result<(), ClientGone> {
        let mut st = self.lock();
        if self.is_cancelled() || st.ended_by_server || st.end_due {
            return Err(ClientGone);
        }
        st.flush_head |= flush_head;
        if head.is_some() {
            st.head = head;
            st.exit_head = None;
        }
        st.unsent += weight(&data);
        st.pending.push_back(data);
        self.schedule_pass(st);
        Ok(())
    }

    /// Has the event loop make a pass over the stream (one, however many ask before it runs);
    /// lets the lock go.
    fn schedule_pass(&self, mut st: Locked<'_>) {
        let wake = !st.scheduled;
        st.scheduled = true;
        drop(st);
        if wake {
            if let Some(me) = self.me.upgrade() {
                crate::notify::schedule(me);
            }
        }
    }
}

/// What a piece holds while it waits to be sent besides its bytes: its chunk, nginx's buffer
/// and chain link, its places in the two queues (about 210 bytes, measured). Counted, so that
/// `wsgi_stream_buffer` bounds a stream of tiny pieces (an event stream's, a token-by-token
/// answer's) too: counted by their bytes alone, 256 KiB of 1-byte pieces held 54 MB for a
/// client that did not read, and an ASGI app's send() paused only after 256K of them.
const PIECE_COST: usize = 256;

fn weight(data: &Chunk) -> usize {
    match data.len() {
        // A head without body bytes: nothing waits for nginx.
        0 => 0,
        len => len + PIECE_COST,
    }
}
