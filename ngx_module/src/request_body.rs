//! Unbuffered request bodies (`wsgi_request_buffering off`): `wsgi.input` reads the body as it
//! arrives, like `proxy_request_buffering off`, without a temp file.
//!
//! The event loop copies what nginx has read into the request's [`BodyStream`]; the Python thread
//! takes it from there, waiting (without the GIL) while nothing has arrived. At most the limit
//! (`wsgi_stream_buffer`) waits unread: beyond it the loop stops reading from the client until
//! the app has read some, so a fast client cannot fill the worker's memory.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use nginx_sys::{
    ngx_http_read_unbuffered_request_body, ngx_http_request_t, ngx_int_t, NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx_wsgi::BodySource;

use crate::ffi_guard::guard;
use crate::notify::Pump;
use crate::stream::LoopRequest;

struct State {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes received and not yet read by the app.
    unread: usize,
    eof: bool,
    error: Option<String>,
    /// The loop stopped reading from the client because `unread` reached the limit.
    paused: bool,
    scheduled: bool,
    /// The request while its task runs; NULL afterwards.
    request: LoopRequest,
}

pub(crate) struct BodyStream {
    state: Mutex<State>,
    arrived: Condvar,
    limit: usize,
    me: Weak<BodyStream>,
}

impl BodyStream {
    pub(crate) fn new(r: *mut ngx_http_request_t, limit: usize) -> Arc<BodyStream> {
        Arc::new_cyclic(|me| BodyStream {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                unread: 0,
                eof: false,
                error: None,
                paused: false,
                scheduled: false,
                request: LoopRequest(r),
            }),
            arrived: Condvar::new(),
            limit,
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what nginx has read and reads on while there is room.
    ///
    /// # Safety
    /// Event-loop thread; `r` is live and reads its body unbuffered.
    pub(crate) unsafe fn pull(&self, r: *mut ngx_http_request_t) {
        let mut st = self.lock();
        // SAFETY: per the function contract.
        unsafe { self.pull_locked(&mut st, r) };
    }

    unsafe fn pull_locked(&self, st: &mut State, r: *mut ngx_http_request_t) {
        // SAFETY: `r` and its request body are live on the event loop.
        unsafe {
            loop {
                let rb = (*r).request_body;
                if rb.is_null() {
                    st.eof = true;
                    break;
                }
                let mut cl = (*rb).bufs;
                while !cl.is_null() {
                    let b = (*cl).buf;
                    if (*b).last > (*b).pos {
                        let len = (*b).last.offset_from((*b).pos) as usize;
                        st.chunks
                            .push_back(std::slice::from_raw_parts((*b).pos, len).to_vec());
                        st.unread += len;
                        // Consumed: nginx may reuse the buffer for what comes next.
                        (*b).pos = (*b).last;
                    }
                    cl = (*cl).next;
                }
                (*rb).bufs = std::ptr::null_mut();
                if (*r).reading_body() == 0 {
                    st.eof = true;
                    break;
                }
                if st.unread >= self.limit {
                    st.paused = true;
                    // The server stopped reading, not the client: no client_body_timeout meanwhile.
                    let rev = (*(*r).connection).read;
                    if (*rev).timer_set() != 0 {
                        nginx_sys::ngx_del_timer(rev);
                    }
                    break;
                }
                let rc = ngx_http_read_unbuffered_request_body(r);
                if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                    st.error = Some(format!("the client's request body failed (status {rc})"));
                    break;
                }
                if (*rb).bufs.is_null() && (*r).reading_body() != 0 {
                    // Nothing more yet: nginx calls `body_reader` when the client sends more.
                    break;
                }
            }
        }
        self.arrived.notify_all();
    }

    /// The task is done: the loop stops feeding this body; a reader still waiting (an app's
    /// background thread) gets an error instead of waiting forever.
    pub(crate) fn finish(&self) {
        let mut st = self.lock();
        st.request = LoopRequest(std::ptr::null_mut());
        if !st.eof && st.error.is_none() {
            st.error = Some("the request is over".into());
        }
        self.arrived.notify_all();
    }

    /// Makes a waiting or later read fail (the request timed out).
    pub(crate) fn fail(&self, why: &str) {
        let mut st = self.lock();
        if st.error.is_none() {
            st.error = Some(why.to_owned());
        }
        self.arrived.notify_all();
    }
}

impl Pump for BodyStream {
    unsafe fn pump(&self) {
        let mut st = self.lock();
        st.scheduled = false;
        let r = st.request.0;
        if !r.is_null() && !st.eof && st.error.is_none() {
            // SAFETY: the request is live while `request` is set.
            unsafe { self.pull_locked(&mut st, r) };
        }
    }
}

impl BodySource for BodyStream {
    fn read(&self, max: usize) -> std::io::Result<Vec<u8>> {
        let mut st = self.lock();
        loop {
            if let Some(front) = st.chunks.front_mut() {
                let data = if front.len() > max {
                    front.drain(..max).collect()
                } else {
                    st.chunks.pop_front().unwrap_or_default()
                };
                st.unread -= data.len();
                let wake = st.paused && st.unread < self.limit && !st.scheduled;
                if wake {
                    st.paused = false;
                    st.scheduled = true;
                }
                drop(st);
                if let (true, Some(me)) = (wake, self.me.upgrade()) {
                    crate::notify::schedule(me);
                }
                return Ok(data);
            }
            if let Some(e) = &st.error {
                return Err(std::io::Error::other(e.clone()));
            }
            if st.eof {
                return Ok(Vec::new());
            }
            st = self.arrived.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The client sent more of the body.
pub(crate) unsafe extern "C" fn body_reader(r: *mut ngx_http_request_t) {
    guard("the wsgi request body reader", (), || {
        // SAFETY: nginx calls this on the event loop with the live request; the job is in the
        // module context.
        unsafe {
            let job = *(*r).ctx.add(crate::module().ctx_index) as *const crate::handler::Job;
            if job.is_null() {
                return;
            }
            if let Some(body) = (*job).body_stream.clone() {
                body.pull(r);
            }
            // The body reader is the request's read handler while the body arrives: it also
            // notices a client that goes away, and hands over once the body is complete.
            if (*(*r).connection).error() != 0 {
                (*job).stream.client_gone();
            } else if (*r).reading_body() == 0 {
                (*job).stream.watch_client(r);
            }
        }
    })
}
