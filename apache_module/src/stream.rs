//! Streamed responses: the app runs on the request's own Apache thread, so each piece it yields
//! goes straight down the output filters with a flush. The core output filter writes a flushed
//! brigade before it returns, so a slow client holds the app back (without the GIL) instead of
//! letting the child buffer the body, and a piece lent by the app (a large `bytes` object) is let
//! go as soon as it has been written, never copied.

use std::sync::Mutex;

use ngx_wsgi::{Chunk, ChunkSink, ClientGone, ResponseHead};

use crate::bindings::request_rec;
use crate::brigade::Out;

pub(crate) struct Stream {
    r: *mut request_rec,
    /// One brigade for the whole response: a brigade is allocated from the request's pool,
    /// which only grows, so a long stream must not make one per piece.
    out: Out,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    head_sent: bool,
    gone: bool,
}

// SAFETY: the core calls the sink only from the thread running the app, which is the request's
// own Apache thread; the request outlives the app's run.
unsafe impl Send for Stream {}
// SAFETY: as above; the state is behind a mutex regardless.
unsafe impl Sync for Stream {}

impl Stream {
    /// # Safety
    /// `r` is a live request, and the stream is used only while its handler runs.
    pub(crate) unsafe fn new(r: *mut request_rec) -> Stream {
        Stream {
            r,
            // SAFETY: per the function contract; the brigade lives in the request's pool.
            out: unsafe { Out::new(r) },
            state: Mutex::new(State::default()),
        }
    }

    /// The response's brigade.
    pub(crate) fn out(&self) -> &Out {
        &self.out
    }

    /// Whether the head already went out through this stream.
    pub(crate) fn head_sent(&self) -> bool {
        self.state.lock().map(|s| s.head_sent).unwrap_or(true)
    }
}

impl ChunkSink for Stream {
    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone> {
        let mut state = self.state.lock().map_err(|_| ClientGone)?;
        if state.gone {
            return Err(ClientGone);
        }
        // SAFETY: see the Send/Sync notes: this is the request's thread, inside its handler.
        unsafe {
            if let Some(head) = head {
                crate::response::set_head(self.r, &head, head.content_length);
                state.head_sent = true;
            }
            self.out.data(&data);
            self.out.flush();
            if !self.out.pass() {
                state.gone = true;
                return Err(ClientGone);
            }
        }
        Ok(())
    }
}
