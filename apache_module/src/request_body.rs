//! `wsgi.input` through Apache's input filters (`ap_get_client_block`: de-chunked, limited by
//! `LimitRequestBody`, `Expect: 100-continue` answered on the first read).
//!
//! A body with a `Content-Length` is read as the app reads it, on the request's own thread and
//! without the GIL. A chunked body is read whole before the app starts, so that the app gets its
//! `CONTENT_LENGTH` (SPEC: a body that arrived without a length is presented with one), unless
//! `NgxWsgiRequestBuffering Off` asks for it as it arrives.

use std::ffi::c_int;
use std::io;
use std::sync::Arc;

use ngx_wsgi::{Body, BodySource, RequestBody};

use crate::bindings::{
    ap_get_client_block, ap_setup_client_block, request_rec, HTTP_BAD_REQUEST, OK,
    REQUEST_CHUNKED_DECHUNK,
};

/// The request's body as the app will read it, and the length of a de-chunked one.
pub(crate) struct Prepared {
    pub(crate) body: RequestBody,
    pub(crate) dechunked_len: Option<u64>,
}

/// The most one read asks of Apache.
const READ_MAX: usize = 256 * 1024;

/// # Safety
/// `r` is a live request on the calling thread whose body has not been read yet.
pub(crate) unsafe fn prepare(r: *mut request_rec, buffering: bool) -> Result<Prepared, c_int> {
    // SAFETY: per the function contract.
    unsafe {
        let rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK as c_int);
        if rc != OK as c_int {
            return Err(rc);
        }
        if (*r).read_chunked != 0 && buffering {
            let mut all = Vec::new();
            loop {
                let chunk = read_block(r, READ_MAX).map_err(|_| HTTP_BAD_REQUEST as c_int)?;
                if chunk.is_empty() {
                    break;
                }
                all.extend_from_slice(&chunk);
            }
            let len = all.len() as u64;
            return Ok(Prepared {
                body: RequestBody::Buffered(Body::from_vec(all)),
                dechunked_len: Some(len),
            });
        }
        let body = if (*r).remaining > 0 || (*r).read_chunked != 0 {
            RequestBody::Streamed(Arc::new(ClientBody { request: r }))
        } else {
            RequestBody::Buffered(Body::empty())
        };
        Ok(Prepared {
            body,
            dechunked_len: None,
        })
    }
}

/// # Safety
/// `r` is a live request on the calling thread, set up by `ap_setup_client_block`.
unsafe fn read_block(r: *mut request_rec, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max.clamp(1, READ_MAX)];
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe { ap_get_client_block(r, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the client's request body could not be read (connection lost, bad framing, or over LimitRequestBody)",
        ));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// A body read as the app asks for it.
struct ClientBody {
    request: *mut request_rec,
}

// SAFETY: the app reads `wsgi.input` on the request's own thread (Apache's worker thread runs the
// app); the input object is detached when the request ends, so no read outlives the request.
unsafe impl Send for ClientBody {}
// SAFETY: as above: only the request's thread ever calls `read`.
unsafe impl Sync for ClientBody {}

impl BodySource for ClientBody {
    fn read(&self, max: usize) -> io::Result<Vec<u8>> {
        // SAFETY: see the Send/Sync notes; the request is live while its app runs.
        unsafe { read_block(self.request, max) }
    }
}
