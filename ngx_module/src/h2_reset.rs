//! Resetting an HTTP/2 stream at once, while its request stays: a response cut at its deadline
//! whose app's thread still runs (in C code, where no exception lands) keeps its request, which
//! that thread uses, until the thread is back; nginx would reset the stream only then, and the
//! client would wait on a response with no end. Its HTTP/1 twin is a `shutdown()` of the socket.
//!
//! nginx has no public call for it (`ngx_http_v2_terminate_stream` is static and finalizes the
//! request), so this queues the RST_STREAM frame as that function does, in a control frame of
//! the connection's, and marks the stream as nginx does: no second reset at its close, no more DATA from
//! the client read, no more output written.

use nginx_sys::{
    ngx_alloc_chain_link, ngx_create_temp_buf, ngx_http_request_t, ngx_http_v2_connection_t,
    ngx_http_v2_out_frame_t, ngx_int_t, ngx_pcalloc, ngx_post_event, ngx_posted_events, NGX_AGAIN,
    NGX_HTTP_V2_RST_STREAM_FRAME, NGX_OK,
};

/// RFC 9113's INTERNAL_ERROR, as nginx resets a stream whose response could not be finished.
const INTERNAL_ERROR: u32 = 0x2;
/// A frame's header: length, type, flags, stream id.
const FRAME_HEADER_SIZE: usize = 9;
/// The header, then RST_STREAM's error code.
const FRAME_SIZE: usize = FRAME_HEADER_SIZE + 4;
/// nginx's buffer of a control frame (NGX_HTTP_V2_FRAME_BUFFER_SIZE, private to
/// ngx_http_v2.c): a frame made here may carry any of nginx's once it is reused.
const FRAME_BUFFER_SIZE: usize = 24;
/// nginx's bound on a connection's control frames (`ngx_http_v2_get_frame`).
const MAX_FRAMES: usize = 10000;

/// Resets `r`'s HTTP/2 stream now; false when `r` is no HTTP/2 stream's request or the frame
/// could not be made (the stream is then reset when the request ends, as before).
///
/// # Safety
/// Event-loop thread; `r` is live and is the main request.
pub(crate) unsafe fn reset_now(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: per the function contract; an HTTP/2 request's stream, its connection and its
    // node live until the request is closed.
    unsafe {
        let stream = (*r).stream;
        if stream.is_null() {
            return false;
        }
        if (*stream).rst_sent() != 0 || (*stream).out_closed() != 0 {
            return true;
        }
        let h2c = (*stream).connection;
        let c = (*h2c).connection;
        let frame = control_frame(h2c);
        if frame.is_null() {
            return false;
        }
        let sid = ((*(*stream).node).id as u32) & 0x7fff_ffff;
        let mut bytes = [0u8; FRAME_SIZE];
        bytes[..3].copy_from_slice(&4u32.to_be_bytes()[1..]);
        bytes[3] = NGX_HTTP_V2_RST_STREAM_FRAME as u8;
        bytes[5..9].copy_from_slice(&sid.to_be_bytes());
        bytes[9..].copy_from_slice(&INTERNAL_ERROR.to_be_bytes());
        let buf = (*(*frame).first).buf;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (*buf).pos, FRAME_SIZE);
        (*buf).last = (*buf).pos.add(FRAME_SIZE);
        (*frame).stream = std::ptr::null_mut();
        (*frame).length = 4;
        queue_control_frame(h2c, frame);

        (*stream).set_rst_sent(1);
        (*stream).set_skip_data(1);
        (*(*r).connection).set_error(1);
        // The connection's write handler sends the queue, on this loop's next turn.
        ngx_post_event((*c).write, std::ptr::addr_of_mut!(ngx_posted_events));
        true
    }
}

/// A control frame as nginx's `ngx_http_v2_get_frame` makes one: from the connection's free
/// frames, else new on the connection's pool (counted as its own are, against its flood limit),
/// with nginx's buffer size, so that a frame sent goes back to the free ones for nginx to reuse
/// (a connection that has many streams cut keeps no frame per cut). Null when none can be had.
///
/// # Safety
/// Event-loop thread; `h2c` is live.
unsafe fn control_frame(h2c: *mut ngx_http_v2_connection_t) -> *mut ngx_http_v2_out_frame_t {
    // SAFETY: per the function contract; a free frame's chain link and buffer are live.
    unsafe {
        let frame = (*h2c).free_frames;
        if !frame.is_null() {
            (*h2c).free_frames = (*frame).next;
            let buf = (*(*frame).first).buf;
            (*buf).pos = (*buf).start;
            (*frame).set_blocked(0);
            return frame;
        }
        if (*h2c).frames >= MAX_FRAMES {
            return std::ptr::null_mut();
        }
        // The HTTP/2 pool while the connection has streams: a frame may wait in the queue after
        // its stream is gone.
        let pool = if (*h2c).pool.is_null() {
            (*(*h2c).connection).pool
        } else {
            (*h2c).pool
        };
        let frame = ngx_pcalloc(pool, size_of::<ngx_http_v2_out_frame_t>())
            .cast::<ngx_http_v2_out_frame_t>();
        if frame.is_null() {
            return frame;
        }
        let link = ngx_alloc_chain_link(pool);
        let buf = ngx_create_temp_buf(pool, FRAME_BUFFER_SIZE);
        if link.is_null() || buf.is_null() {
            return std::ptr::null_mut();
        }
        (*buf).set_last_buf(1);
        (*link).buf = buf;
        (*link).next = std::ptr::null_mut();
        (*frame).first = link;
        (*frame).last = link;
        (*frame).handler = Some(frame_sent);
        (*h2c).frames += 1;
        frame
    }
}

/// Where nginx's `ngx_http_v2_queue_blocked_frame` puts a control frame: after the data frames
/// queued last, before any blocked or control frame.
///
/// # Safety
/// Event-loop thread; `h2c` is live and `frame` is not queued.
unsafe fn queue_control_frame(
    h2c: *mut ngx_http_v2_connection_t,
    frame: *mut ngx_http_v2_out_frame_t,
) {
    // SAFETY: per the function contract; the queue's frames are live.
    unsafe {
        let mut out = std::ptr::addr_of_mut!((*h2c).last_out);
        while !(*out).is_null() && (**out).blocked() == 0 && !(**out).stream.is_null() {
            out = std::ptr::addr_of_mut!((**out).next);
        }
        (*frame).next = *out;
        *out = frame;
    }
}

/// Called by nginx for a frame this module made once it went out, or in part: a whole one goes
/// back to the connection's free frames, as nginx's `ngx_http_v2_frame_handler` does (nginx may
/// reuse it for any control frame, this handler with it).
unsafe extern "C" fn frame_sent(
    h2c: *mut ngx_http_v2_connection_t,
    frame: *mut ngx_http_v2_out_frame_t,
) -> ngx_int_t {
    crate::ffi::guard("an HTTP/2 control frame", NGX_OK as ngx_int_t, || {
        // SAFETY: nginx passes its live connection and a frame made by `control_frame`, whose
        // one buffer is live.
        unsafe {
            let buf = (*(*frame).first).buf;
            if (*buf).pos != (*buf).last {
                return NGX_AGAIN as ngx_int_t;
            }
            (*frame).next = (*h2c).free_frames;
            (*h2c).free_frames = frame;
            (*h2c).total_bytes += (FRAME_HEADER_SIZE + (*frame).length) as libc::off_t;
        }
        NGX_OK as ngx_int_t
    })
}
