//! The request's Apache side while its app runs: the response's brigade, whether its head went
//! out, and whose turn it is to touch the request.
//!
//! Apache's `request_rec`, its pools and its connection's bucket allocator are not thread-safe,
//! and two threads may need them: the request's own thread (sending what the app streams, reading
//! the body, logging for the request) and, at most once, the deadline thread, which answers a
//! request that is still inside Python when its `NgxWsgiRequestTimeout` passes. They take turns.
//! The request's thread waits, briefly, while the deadline thread writes its answer; the deadline
//! thread never waits for the request's thread: when that one is inside Apache (a read from or a
//! write to a slow client) at the deadline, it answers itself as soon as its turn ends.
//! Once the request is answered that way, nothing the app produces reaches the client.

use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

use ngx_wsgi::{Chunk, ChunkSink, ClientGone, ResponseHead};

use crate::bindings::request_rec;
use crate::brigade::Out;

pub(crate) struct Side {
    r: *mut request_rec,
    /// A subrequest's (an SSI include's): its output is part of its parent's response, into
    /// which the deadline writes nothing.
    subrequest: bool,
    /// The MPM thread that runs it (None: an HTTP/2 stream's, on mod_http2's own threads).
    mpm_thread: Option<ThreadId>,
    /// One brigade for the whole response: a brigade is allocated from the request's pool,
    /// which only grows, so a long stream must not make one per piece.
    out: Out,
    state: Mutex<State>,
    /// Signalled when a turn ends.
    turn_over: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    Nobody,
    /// A thread of the request (its own, in practice), with how many nested turns it holds.
    Thread(ThreadId, u32),
    Deadline,
}

struct State {
    holder: Holder,
    head_sent: bool,
    /// A write failed: the client is gone.
    gone: bool,
    /// The deadline passed while the app ran.
    expired: bool,
    /// The deadline's answer went out in the app's place.
    answered: bool,
    /// The app's part is over: the deadline no longer applies.
    finished: bool,
    /// Apache answered the request itself, refusing its body: nothing else may go out.
    ended_by_apache: bool,
}

// SAFETY: the request and its pool outlive every use of the pointer: the handler calls `finish`
// before it returns (also when it unwinds), after which no turn is taken any more, and a turn
// under way when it is called finishes first. Turns make the uses one thread at a time.
unsafe impl Send for Side {}
// SAFETY: as above; the state is behind a mutex.
unsafe impl Sync for Side {}

/// A turn of the calling thread; ends (and answers a deadline that passed meanwhile) on drop.
struct Turn<'a>(&'a Side);

impl Side {
    /// # Safety
    /// `r` is a live request, and the handler calls `finish` before it returns.
    pub(crate) unsafe fn new(r: *mut request_rec) -> Side {
        Side {
            r,
            // SAFETY: per the function contract.
            subrequest: unsafe { !(*r).main.is_null() },
            // SAFETY: per the function contract; an HTTP/2 stream's connection has a master.
            mpm_thread: unsafe { (*(*r).connection).master.is_null() }
                .then(|| std::thread::current().id()),
            // SAFETY: per the function contract; the brigade lives in the request's pool.
            out: unsafe { Out::new(r) },
            state: Mutex::new(State {
                holder: Holder::Nobody,
                head_sent: false,
                gone: false,
                expired: false,
                answered: false,
                finished: false,
                ended_by_apache: false,
            }),
            turn_over: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn turn(&self) -> Turn<'_> {
        let me = std::thread::current().id();
        let mut st = self.lock();
        loop {
            match st.holder {
                Holder::Nobody => st.holder = Holder::Thread(me, 1),
                Holder::Thread(t, n) if t == me => st.holder = Holder::Thread(t, n + 1),
                _ => {
                    st = self.turn_over.wait(st).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
            }
            return Turn(self);
        }
    }

    /// The response's brigade, for the handler once the app is done (`finish` called).
    pub(crate) fn out(&self) -> &Out {
        &self.out
    }

    /// Whether the head already went out while the app ran.
    pub(crate) fn head_sent(&self) -> bool {
        self.lock().head_sent
    }

    /// Reads up to `max` bytes of the request body for the app.
    pub(crate) fn read_body(&self, max: usize) -> io::Result<Vec<u8>> {
        let _turn = self.turn();
        {
            let st = self.lock();
            if st.finished {
                return Err(io::Error::other("the request is over"));
            }
            if st.expired {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request timed out (NgxWsgiRequestTimeout)",
                ));
            }
        }
        // SAFETY: the request is live (see the Send note) and this thread has the turn.
        let read = unsafe { crate::client_io::read_block(self.r, max) };
        // Looked at after every read, not only a failed one: once the app's head went out,
        // Apache's error meets no header filter, and the read ends as if the body had (with what
        // it read of a broken chunk). Nothing else ends the response while the app runs.
        // SAFETY: as above.
        let Some(status) = (unsafe { crate::client_io::ended_by_apache(self.r) }) else {
            return read;
        };
        self.lock().ended_by_apache = true;
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "Apache refused the request body (over LimitRequestBody, or broken chunked \
                 framing) and answered the request itself with a {status}: nothing the app sends \
                 reaches the client"
            ),
        ))
    }

    /// Whether Apache answered the request itself, refusing its body while the app read it.
    pub(crate) fn ended_by_apache(&self) -> bool {
        self.lock().ended_by_apache
    }

    /// The deadline passed (deadline thread). When the app still runs, calls `claimed` (to
    /// count and interrupt it), then answers in its place now or, when the request's thread is
    /// inside Apache, leaves the answer to it. Does nothing once the app is done.
    pub(crate) fn expire(&self, claimed: impl FnOnce()) {
        let mut st = self.lock();
        if st.finished || st.expired {
            return;
        }
        st.expired = true;
        // Counted before the thread can finish (which it cannot while this lock is held).
        if let Some(thread) = self.mpm_thread {
            crate::stuck_child::lost(thread);
        }
        let ours = st.holder == Holder::Nobody;
        if ours {
            st.holder = Holder::Deadline;
        }
        drop(st);
        claimed();
        if ours {
            self.answer();
            self.lock().holder = Holder::Nobody;
            self.turn_over.notify_all();
        }
    }

    /// The app's part is over (request thread): from now on the handler alone uses the request.
    /// Returns whether the deadline answered it (then nothing else is to be sent).
    pub(crate) fn finish(&self) -> bool {
        let turn = self.turn();
        let (first, expired) = {
            let mut st = self.lock();
            (!std::mem::replace(&mut st.finished, true), st.expired)
        };
        drop(turn);
        // The thread counted lost as its deadline was marked (`expire`) is back.
        if let (true, true, Some(thread)) = (first, expired, self.mpm_thread) {
            crate::stuck_child::back(thread);
        }
        self.lock().answered
    }

    /// Whether this is a subrequest's side (an SSI include's, whose parent's response goes on).
    pub(crate) fn is_subrequest(&self) -> bool {
        self.subrequest
    }

    /// Sends the deadline's answer, in the turn of the calling thread (marked answered first),
    /// unless Apache's own answer ended the response already, or the request is a subrequest:
    /// its handler's status, once the app's thread is back, tells its parent.
    fn answer(&self) {
        let head_sent = {
            let mut st = self.lock();
            st.answered = true;
            if st.ended_by_apache || self.subrequest {
                return;
            }
            std::mem::replace(&mut st.head_sent, true)
        };
        // SAFETY: the request is live (see the Send note) and the caller has the turn.
        unsafe { crate::client_io::answer_timeout(self.r, &self.out, head_sent) };
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let side = self.0;
        let mut st = side.lock();
        if let Holder::Thread(t, n) = st.holder {
            if n > 1 {
                st.holder = Holder::Thread(t, n - 1);
                return;
            }
        }
        if st.expired && !st.answered {
            drop(st);
            side.answer();
            st = side.lock();
        }
        st.holder = Holder::Nobody;
        drop(st);
        side.turn_over.notify_all();
    }
}

impl crate::log::Turns for Side {
    fn in_turn(&self, f: &mut dyn FnMut()) {
        let _turn = self.turn();
        f()
    }
}

/// Streamed responses: the app runs on the request's own Apache thread, so each piece it yields
/// goes straight down the output filters with a flush. The core output filter writes a flushed
/// brigade before it returns, so a slow client holds the app back (without the GIL) instead of
/// letting the child buffer the body, and a piece lent by the app (a large `bytes` object) is let
/// go as soon as it has been written, never copied.
impl ChunkSink for Side {
    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone> {
        let _turn = self.turn();
        {
            let mut st = self.lock();
            if st.gone || st.expired || st.finished || st.ended_by_apache {
                return Err(ClientGone);
            }
            if head.is_some() {
                st.head_sent = true;
            }
        }
        // SAFETY: the request is live (see the Send note) and this thread has the turn.
        unsafe {
            if let Some(head) = head {
                crate::client_io::set_head(self.r, &head, head.content_length);
            }
        }
        self.out.data(&data);
        self.out.flush();
        if !self.out.pass() {
            self.lock().gone = true;
            return Err(ClientGone);
        }
        Ok(())
    }
}
