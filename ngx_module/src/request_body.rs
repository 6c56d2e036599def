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
    ngx_http_client_body_handler_pt, ngx_http_finalize_request, ngx_http_read_client_request_body,
    ngx_http_read_unbuffered_request_body, ngx_http_request_t, ngx_int_t, NGX_DONE,
    NGX_HTTP_BAD_REQUEST, NGX_HTTP_CLIENT_CLOSED_REQUEST, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_SPECIAL_RESPONSE, NGX_HTTP_VERSION_11,
};
use ngx_wsgi::BodySource;

use crate::ffi::LoopRequest;
use crate::notify::Pump;

/// A content handler's start: reads the body as the location says (whole, or, with
/// `wsgi_request_buffering off`, as it arrives, `ready` running once reading has started), then
/// `ready` runs; returns what the content handler returns.
///
/// # Safety
/// Event-loop thread; `r` is live, in its content phase.
pub(crate) unsafe fn read_then(
    r: *mut ngx_http_request_t,
    ready: ngx_http_client_body_handler_pt,
) -> ngx_int_t {
    // SAFETY: per the function contract.
    #[cfg(not(ngx_refuses_length_with_chunked))]
    unsafe {
        close_after_length_with_chunked(r)
    };
    // SAFETY: per the function contract; the body handler owns the reference this call takes.
    let rc = unsafe {
        if crate::conf::loc_conf(&*r).is_some_and(|lc| lc.streaming.request_buffering == 0) {
            (*r).set_request_body_no_buffering(1);
            if expects_continue(r) {
                // nginx would send the 100 Continue now; the app's first read sends it (see
                // `BodyStream::pull`), as Apache does, so that an upload the app refuses unread
                // is never sent.
                (*r).set_expect_tested(1);
            }
        }
        ngx_http_read_client_request_body(r, ready)
    };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    NGX_DONE as ngx_int_t
}

/// nginx before 1.21.1 (Ubuntu 22.04's 1.18) serves a request with both `Content-Length` and
/// `Transfer-Encoding: chunked` as chunked (it drops the length, `ngx_http_process_request_header`)
/// and keeps the connection: what follows the chunked body is read as the next request, which a
/// proxy in front that went by the length took for part of this body (request smuggling).
/// RFC 9112 (6.3) lets a server serve it as chunked if it closes the connection after the
/// response; 1.21.1 refuses it with a 400. The app's response is the connection's last.
///
/// # Safety
/// `r` is live, its header read.
#[cfg(not(ngx_refuses_length_with_chunked))]
unsafe fn close_after_length_with_chunked(r: *mut ngx_http_request_t) {
    // SAFETY: per the function contract: the headers list lives in the request's pool.
    unsafe {
        if (*r).headers_in.chunked() == 0 {
            return;
        }
        let mut length = false;
        crate::request_info::for_each_header(&(*r).headers_in.headers.part, |name, _| {
            length |= name.eq_ignore_ascii_case(b"content-length");
        });
        if length {
            (*r).set_keepalive(0);
        }
    }
}

/// Whether the client waits for a `100 Continue` before it sends the body (nginx answers
/// `Expect: 100-continue` over HTTP/1.1 only).
///
/// # Safety
/// `r` is live.
unsafe fn expects_continue(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: per the function contract; `expect`, when set, points into the request's pool.
    unsafe {
        let expect = (*r).headers_in.expect;
        // HTTP/2 and HTTP/3 are other versions.
        if (*r).http_version != NGX_HTTP_VERSION_11 as usize || expect.is_null() {
            return false;
        }
        let value = &(*expect).value;
        value.len == 12
            && std::slice::from_raw_parts(value.data, value.len)
                .eq_ignore_ascii_case(b"100-continue")
    }
}

/// A body handler's work: `post` hands the request on, or says which status to answer with
/// (then the request is finalized with it, releasing the body-reading reference).
///
/// # Safety
/// Event-loop thread; `r` is the live request nginx passed to the body handler.
pub(crate) unsafe fn post_or_fail(
    r: *mut ngx_http_request_t,
    post: unsafe fn(*mut ngx_http_request_t) -> Result<(), u32>,
) {
    let status = crate::ffi::guard(
        "handing the request to the application",
        Err(NGX_HTTP_INTERNAL_SERVER_ERROR),
        // SAFETY: per the function contract.
        || unsafe { post(r) },
    );
    if let Err(status) = status {
        // SAFETY: the request is live and this releases the body-reading reference.
        unsafe { ngx_http_finalize_request(r, status as ngx_int_t) };
    }
}

struct State {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes received and not yet read by the app.
    unread: usize,
    eof: bool,
    error: Option<String>,
    /// The status nginx gave the body's failure, when the client caused it (400: a malformed
    /// chunk, 408: client_body_timeout, 413: over client_max_body_size).
    client_fault: Option<ngx_int_t>,
    /// The loop stopped reading from the client because `unread` reached the limit.
    paused: bool,
    scheduled: bool,
    /// The request while its task runs; NULL afterwards.
    request: LoopRequest,
    /// Readers blocked in `read` on `arrived` (a notify is a system call even with no one
    /// waiting; an ASGI reader never waits there).
    waiting: usize,
    /// The client waits for a 100 Continue before it sends the body, and nothing was sent.
    continue_owed: bool,
    /// The app has asked for the body: the loop is to send the 100 Continue owed.
    continue_asked: bool,
}

pub(crate) struct BodyStream {
    state: Mutex<State>,
    arrived: Condvar,
    /// Fired where `arrived` is notified, for a reader that does not block (ASGI).
    waker: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    limit: usize,
    me: Weak<BodyStream>,
}

impl BodyStream {
    /// # Safety
    /// Event-loop thread; `r` is live and reads its body unbuffered.
    pub(crate) unsafe fn new(r: *mut ngx_http_request_t, limit: usize) -> Arc<BodyStream> {
        // SAFETY: per the function contract; in this mode nginx sent no 100 (`read_then`).
        let continue_owed = unsafe { expects_continue(r) };
        Self::build(LoopRequest(r), limit, continue_owed)
    }

    fn build(request: LoopRequest, limit: usize, continue_owed: bool) -> Arc<BodyStream> {
        Arc::new_cyclic(|me| BodyStream {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                unread: 0,
                eof: false,
                error: None,
                client_fault: None,
                paused: false,
                scheduled: false,
                request,
                waiting: 0,
                continue_owed,
                continue_asked: false,
            }),
            arrived: Condvar::new(),
            waker: Mutex::new(None),
            limit,
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes at most `max` bytes of what has arrived, with `st` locked; the loop is asked to read
    /// on (after the lock is released: `resume`) when this makes room below the limit.
    fn take(&self, st: &mut State, max: usize) -> Option<(Vec<u8>, bool)> {
        let front = st.chunks.front_mut()?;
        let data = if front.len() > max {
            let data = front[..max].to_vec();
            front.drain(..max);
            data
        } else {
            st.chunks.pop_front().unwrap_or_default()
        };
        st.unread -= data.len();
        let resume = st.paused && st.unread < self.limit && !st.scheduled;
        if resume {
            st.paused = false;
            st.scheduled = true;
        }
        Some((data, resume))
    }

    fn resume(&self) {
        if let Some(me) = self.me.upgrade() {
            crate::notify::schedule(me);
        }
    }

    /// The app reads: says whether the loop is to be asked (`resume`) to send the 100 Continue
    /// the client waits for.
    fn ask_for_body(&self, st: &mut State) -> bool {
        if !st.continue_owed || st.continue_asked || st.error.is_some() || st.eof {
            return false;
        }
        st.continue_asked = true;
        let schedule = !st.scheduled;
        st.scheduled = true;
        schedule
    }

    /// Sends the 100 Continue owed, unless the response has started (none may follow a final
    /// response). False when the connection failed.
    ///
    /// # Safety
    /// Event-loop thread; `r` is live.
    unsafe fn send_continue(&self, r: *mut ngx_http_request_t) -> bool {
        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        // SAFETY: per the function contract; nginx's send writes from the buffer it is given.
        unsafe {
            let c = (*r).connection;
            if (*r).header_sent() != 0 || (*c).error() != 0 {
                return true;
            }
            let Some(send) = (*c).send else {
                return true;
            };
            // As nginx does: so small a write goes out whole, or the connection is broken.
            if send(c, CONTINUE.as_ptr().cast_mut(), CONTINUE.len()) == CONTINUE.len() as isize {
                return true;
            }
            (*c).set_error(1);
        }
        let mut st = self.lock();
        st.error = Some("sending 100 Continue to the client failed".into());
        st.client_fault = Some(NGX_HTTP_BAD_REQUEST as ngx_int_t);
        let waiting = st.waiting > 0;
        drop(st);
        self.notify(waiting);
        false
    }

    /// Takes what nginx has read and reads on while there is room. The lock is taken only to
    /// add what arrived: the copy out of nginx's buffers and the read from the socket run
    /// without it, so that a reader asking for data meanwhile is not held up by them. Says
    /// whether the body failed: nginx's reader is then done with it (though it leaves the
    /// request reading), and the client is only to be watched for its going.
    ///
    /// # Safety
    /// Event-loop thread; `r` is live and reads its body unbuffered.
    pub(crate) unsafe fn pull(&self, r: *mut ngx_http_request_t) -> bool {
        // Whether a reader has something new, and whether one waits on `arrived`.
        let mut news = false;
        let mut waiting;
        let mut failed = false;
        let send_continue = {
            let mut st = self.lock();
            if st.error.is_some() {
                // Called again as the client sends on, nginx's reader fails again, or loops for
                // ever without returning to the event loop.
                return true;
            }
            let asked = st.continue_owed && st.continue_asked;
            st.continue_owed &= !asked;
            asked
        };
        // SAFETY: per the function contract.
        if send_continue && !unsafe { self.send_continue(r) } {
            return true;
        }
        // SAFETY: `r` and its request body are live on the event loop, which alone touches
        // them.
        unsafe {
            loop {
                let rb = (*r).request_body;
                let mut arrived = Vec::new();
                if !rb.is_null() {
                    let mut cl = (*rb).bufs;
                    while !cl.is_null() {
                        let b = (*cl).buf;
                        if (*b).last > (*b).pos {
                            let len = (*b).last.offset_from((*b).pos) as usize;
                            arrived.push(std::slice::from_raw_parts((*b).pos, len).to_vec());
                            // Consumed: nginx may reuse the buffer for what comes next.
                            (*b).pos = (*b).last;
                        }
                        cl = (*cl).next;
                    }
                    (*rb).bufs = std::ptr::null_mut();
                }
                let ended = rb.is_null() || (*r).reading_body() == 0;
                let full = {
                    let mut st = self.lock();
                    news |= ended || !arrived.is_empty();
                    // A client that sends without waiting for the 100 Continue needs none.
                    st.continue_owed &= !news;
                    for chunk in arrived {
                        st.unread += chunk.len();
                        st.chunks.push_back(chunk);
                    }
                    st.eof |= ended;
                    waiting = st.waiting > 0;
                    let full = !ended && st.unread >= self.limit;
                    st.paused |= full;
                    full
                };
                if ended {
                    break;
                }
                if full {
                    // The server stopped reading, not the client: no client_body_timeout meanwhile.
                    let rev = (*(*r).connection).read;
                    if (*rev).timer_set() != 0 {
                        nginx_sys::ngx_del_timer(rev);
                    }
                    break;
                }
                let rc = ngx_http_read_unbuffered_request_body(r);
                if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                    let mut st = self.lock();
                    st.error = Some(body_failure(rc, (*(*r).connection).error() != 0));
                    st.client_fault = (400..500).contains(&rc).then_some(rc);
                    waiting = st.waiting > 0;
                    news = true;
                    failed = true;
                    break;
                }
                if (*rb).bufs.is_null() && (*r).reading_body() != 0 {
                    // Nothing more yet: `on_body_data` pulls again when the client sends more.
                    if self.lock().continue_owed {
                        // The client waits for the 100 Continue, which the app has not asked
                        // for: client_body_timeout starts when it is sent.
                        let rev = (*(*r).connection).read;
                        if (*rev).timer_set() != 0 {
                            nginx_sys::ngx_del_timer(rev);
                        }
                    }
                    break;
                }
            }
        }
        if news {
            self.notify(waiting);
        }
        failed
    }

    fn notify(&self, waiting: bool) {
        if waiting {
            self.arrived.notify_all();
        }
        if let Some(wake) = &*self.waker.lock().unwrap_or_else(|e| e.into_inner()) {
            wake();
        }
    }

    /// What the request answers once the app is done, when the client broke its body: that
    /// status, as nginx answers it when it reads the whole body first (the app's response,
    /// or the error its read raised, is dropped), unless the response has started; 499 when
    /// the client went away. Either way the connection is not kept alive: where the next
    /// request would start is lost.
    ///
    /// # Safety
    /// Event-loop thread; `r` is this body's live request.
    pub(crate) unsafe fn client_fault_answer(
        &self,
        r: *mut ngx_http_request_t,
        head_sent: bool,
    ) -> Option<ngx_int_t> {
        let status = self.lock().client_fault?;
        // SAFETY: per the function contract.
        unsafe {
            (*r).set_keepalive(0);
            // A client that has gone is answered as one (as nginx's proxy does), not with the
            // app's failure over its broken body, a server error.
            if (*(*r).connection).error() != 0 {
                return Some(NGX_HTTP_CLIENT_CLOSED_REQUEST as ngx_int_t);
            }
            if head_sent {
                return None;
            }
        }
        Some(status)
    }

    /// Sets what a reader that does not block is woken with when bytes arrive or the body ends.
    pub(crate) fn set_waker(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    /// What a reader that does not block gets now: at most `max` bytes, the end, a failure, or
    /// nothing yet (then the waker fires when that changes).
    pub(crate) fn try_read(&self, max: usize) -> ngx_wsgi::asgi::BodyRead {
        use ngx_wsgi::asgi::BodyRead;
        let mut st = self.lock();
        if self.ask_for_body(&mut st) {
            drop(st);
            self.resume();
            return BodyRead::Pending;
        }
        let Some((data, resume)) = self.take(&mut st, max) else {
            return match (&st.error, st.eof) {
                (Some(e), _) => BodyRead::Failed {
                    why: e.clone(),
                    client: st.client_fault.is_some(),
                },
                (None, true) => BodyRead::End,
                (None, false) => BodyRead::Pending,
            };
        };
        // The whole body already in (a small one, usually): the app's next receive() would
        // only say so.
        let last = st.eof && st.chunks.is_empty() && st.error.is_none();
        drop(st);
        if resume {
            self.resume();
        }
        if last {
            BodyRead::Last(data)
        } else {
            BodyRead::Data(data)
        }
    }

    /// The task is done: the loop stops feeding this body; a reader still waiting (an app's
    /// background thread) gets an error instead of waiting forever.
    pub(crate) fn finish(&self) {
        let mut st = self.lock();
        st.request = LoopRequest::none();
        if !st.eof && st.error.is_none() {
            st.error = Some("the request is over".into());
        }
        let waiting = st.waiting > 0;
        drop(st);
        self.notify(waiting);
    }

    /// Makes a waiting or later read fail (the request timed out).
    pub(crate) fn fail(&self, why: &str) {
        let mut st = self.lock();
        if st.error.is_none() {
            st.error = Some(why.to_owned());
        }
        let waiting = st.waiting > 0;
        drop(st);
        self.notify(waiting);
    }
}

impl Pump for BodyStream {
    unsafe fn pump(&self) {
        let r = {
            let mut st = self.lock();
            st.scheduled = false;
            if st.eof || st.error.is_some() {
                return;
            }
            st.request.0
        };
        if !r.is_null() {
            // SAFETY: the request is live while `request` is set, and only the event loop (this
            // thread) clears it.
            unsafe { self.pull(r) };
        }
    }
}

impl BodySource for BodyStream {
    fn cancel(&self) {
        self.fail("the request is over");
    }

    fn read(&self, max: usize) -> std::io::Result<Vec<u8>> {
        let mut st = self.lock();
        if self.ask_for_body(&mut st) {
            drop(st);
            self.resume();
            st = self.lock();
        }
        loop {
            if let Some((data, resume)) = self.take(&mut st, max) {
                drop(st);
                if resume {
                    self.resume();
                }
                return Ok(data);
            }
            if let Some(e) = &st.error {
                // The core tells the client's failures (4xx) from the server's by this kind.
                let kind = match st.client_fault {
                    Some(_) => std::io::ErrorKind::ConnectionAborted,
                    None => std::io::ErrorKind::Other,
                };
                return Err(std::io::Error::new(kind, e.clone()));
            }
            if st.eof {
                return Ok(Vec::new());
            }
            st.waiting += 1;
            st = self.arrived.wait(st).unwrap_or_else(|e| e.into_inner());
            st.waiting -= 1;
        }
    }
}

/// What nginx's failed read of an unbuffered body (its status `rc`) says of the client.
fn body_failure(rc: ngx_int_t, connection_failed: bool) -> String {
    match rc as u32 {
        // nginx's read: a close or reset before the body's end (over HTTP/2, of the stream).
        nginx_sys::NGX_HTTP_BAD_REQUEST if connection_failed => {
            "the client closed or reset the connection before the whole request body came"
                .to_string()
        }
        nginx_sys::NGX_HTTP_BAD_REQUEST => {
            "the client's request body is malformed or incomplete, status 400".to_string()
        }
        nginx_sys::NGX_HTTP_REQUEST_TIME_OUT => {
            "the client sent no more of the request body within client_body_timeout, status 408"
                .to_string()
        }
        nginx_sys::NGX_HTTP_REQUEST_ENTITY_TOO_LARGE => {
            "the request body is larger than client_max_body_size, status 413".to_string()
        }
        _ => format!("reading the request body failed, status {rc}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(limit: usize, chunks: &[&[u8]], eof: bool) -> Arc<BodyStream> {
        let b = BodyStream::build(LoopRequest::none(), limit, false);
        {
            let mut st = b.lock();
            for c in chunks {
                st.chunks.push_back(c.to_vec());
                st.unread += c.len();
            }
            st.eof = eof;
        }
        b
    }

    #[test]
    fn reads_split_and_join_what_arrived_then_end() {
        let b = body(1024, &[b"hello ", b"world"], true);
        assert_eq!(b.read(4).unwrap(), b"hell");
        assert_eq!(b.read(100).unwrap(), b"o ");
        assert_eq!(b.read(100).unwrap(), b"world");
        assert_eq!(b.read(100).unwrap(), b"");
        assert_eq!(b.lock().unread, 0);
    }

    #[test]
    fn a_failed_or_finished_body_never_blocks_a_reader() {
        let b = body(1024, &[b"part"], false);
        b.fail("timed out");
        assert_eq!(b.read(100).unwrap(), b"part");
        assert_eq!(b.read(100).unwrap_err().to_string(), "timed out");
        let b = body(1024, &[], false);
        b.finish();
        assert!(b.read(1).is_err());
        assert!(b.lock().request.0.is_null());
    }

    #[test]
    fn a_paused_body_asks_the_loop_for_more_once_below_its_limit() {
        let b = body(4, &[b"abcdef"], false);
        b.lock().paused = true;
        assert_eq!(b.read(1).unwrap(), b"a");
        assert!(b.lock().paused, "still at its limit");
        assert_eq!(b.read(2).unwrap(), b"bc");
        let st = b.lock();
        assert!(!st.paused && st.scheduled);
    }

    #[test]
    fn the_first_read_asks_the_loop_once_for_the_100_continue() {
        use ngx_wsgi::asgi::BodyRead;
        let b = BodyStream::build(LoopRequest::none(), 4, true);
        assert!(matches!(b.try_read(4), BodyRead::Pending));
        {
            let mut st = b.lock();
            assert!(st.continue_asked && st.scheduled);
            st.scheduled = false;
        }
        assert!(matches!(b.try_read(4), BodyRead::Pending));
        assert!(!b.lock().scheduled, "asked once");
        // A body already failed is not asked for: its reader is told at once.
        let b = BodyStream::build(LoopRequest::none(), 4, true);
        b.fail("the request is over");
        assert!(b.read(1).is_err());
        assert!(!b.lock().continue_asked);
    }

    #[test]
    fn a_reader_that_does_not_block_is_told_the_last_bytes_and_the_end() {
        use ngx_wsgi::asgi::BodyRead;
        let b = body(1 << 20, &[b"abc", b"de"], false);
        assert!(matches!(b.try_read(2), BodyRead::Data(d) if d == b"ab"));
        assert!(matches!(b.try_read(100), BodyRead::Data(d) if d == b"c"));
        assert!(matches!(b.try_read(100), BodyRead::Data(d) if d == b"de"));
        assert!(matches!(b.try_read(100), BodyRead::Pending));
        b.lock().chunks.push_back(b"f".to_vec());
        b.lock().unread += 1;
        b.lock().eof = true;
        assert!(matches!(b.try_read(100), BodyRead::Last(d) if d == b"f"));
        assert!(matches!(b.try_read(100), BodyRead::End));
        let failed = body(1 << 20, &[b"x"], false);
        failed.fail("reset");
        assert!(matches!(failed.try_read(100), BodyRead::Data(d) if d == b"x"));
        assert!(
            matches!(failed.try_read(100), BodyRead::Failed { why, client: false } if why == "reset")
        );
        let paused = body(3, &[b"abc"], false);
        paused.lock().paused = true;
        assert!(matches!(paused.try_read(1), BodyRead::Data(d) if d == b"a"));
        let st = paused.lock();
        assert!(!st.paused && st.scheduled && st.unread == 2);
    }

    #[test]
    fn a_reader_waits_for_data_from_another_thread() {
        let b = body(1024, &[], false);
        let reader = {
            let b = b.clone();
            std::thread::spawn(move || b.read(100))
        };
        {
            let mut st = b.lock();
            st.chunks.push_back(b"late".to_vec());
            st.unread += 4;
        }
        b.arrived.notify_all();
        assert_eq!(reader.join().unwrap().unwrap(), b"late");
    }
}
