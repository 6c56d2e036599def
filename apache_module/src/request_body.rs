//! `wsgi.input` through Apache's input filters (`ap_get_client_block`: de-chunked, limited by
//! `LimitRequestBody`, `Expect: 100-continue` answered on the first read).
//!
//! A body with a `Content-Length` is read as the app reads it, on the request's own thread and
//! without the GIL. A chunked body is read whole before the app starts (beyond 1 MiB into an
//! anonymous temporary file), so that the app gets its `CONTENT_LENGTH` (SPEC: a body that arrived
//! without a length is presented with one), unless `NgxWsgiRequestBuffering Off` asks for it as it
//! arrives.

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use ngx_wsgi::{Body, BodySource, RequestBody, Segment};

use crate::side::Side;

use crate::bindings::{
    ap_setup_client_block, request_rec, APLOG_ERR, DONE, HTTP_BAD_REQUEST,
    HTTP_INTERNAL_SERVER_ERROR, OK, REQUEST_CHUNKED_DECHUNK,
};

/// The request's body as the app will read it, and the length of a de-chunked one.
pub(crate) struct Prepared {
    pub(crate) body: RequestBody,
    pub(crate) dechunked_len: Option<u64>,
    /// The temporary file a large de-chunked body was written to: the body reads from its
    /// descriptor, so it must stay open until the app's run is over.
    pub(crate) spill: Option<File>,
}

/// The most one read asks of Apache.
const READ_MAX: usize = crate::client_io::READ_MAX;

/// A de-chunked body larger than this goes to a temporary file instead of the child's memory.
const MEMORY_MAX: usize = 1024 * 1024;

/// # Safety
/// `r` is a live request on the calling thread whose body has not been read yet; `side` is its
/// side, through which the app's reads go.
pub(crate) unsafe fn prepare(
    r: *mut request_rec,
    buffering: bool,
    side: &Arc<Side>,
) -> Result<Prepared, c_int> {
    // SAFETY: per the function contract.
    if unsafe { error_document_of_a_failure(r) } {
        return Ok(Prepared {
            body: RequestBody::Buffered(Body::empty()),
            dechunked_len: Some(0),
            spill: None,
        });
    }
    // SAFETY: per the function contract.
    unsafe {
        let rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK as c_int);
        if rc != OK as c_int {
            return Err(rc);
        }
        if (*r).read_chunked != 0 && buffering {
            return read_whole(r);
        }
        let body = if (*r).remaining > 0 || (*r).read_chunked != 0 {
            RequestBody::Streamed(Arc::new(ClientBody {
                side: side.clone(),
                owner: std::thread::current().id(),
                cancelled: Default::default(),
            }))
        } else {
            RequestBody::Buffered(Body::empty())
        };
        Ok(Prepared {
            body,
            dechunked_len: None,
            spill: None,
        })
    }
}

/// Whether this request is the `ErrorDocument` of one that failed, which the app then runs
/// for, as a GET: the body is gone or was refused, and the app gets none (a length of 0). A
/// body Apache refused (a Content-Length over `LimitRequestBody`) was refused again when read,
/// and Apache answered with its own page instead of the app's; one Apache threw away (its
/// default handler does, before a 404) left a length with no body.
///
/// # Safety
/// `r` is a live request.
unsafe fn error_document_of_a_failure(r: *mut request_rec) -> bool {
    // SAFETY: per the function contract; `prev`, the request that died into this one, lives as
    // long as it.
    unsafe {
        let prev = (*r).prev;
        !prev.is_null() && (400..600).contains(&(*prev).status)
    }
}

/// Reads a chunked body to its end: into memory while it is small, else into a temporary file.
///
/// # Safety
/// As for `prepare`.
unsafe fn read_whole(r: *mut request_rec) -> Result<Prepared, c_int> {
    let failed = |what: &str, e: io::Error| {
        crate::log::write(
            APLOG_ERR as c_int,
            &format!("wsgi: {what} the request body: {e}"),
        );
        HTTP_INTERNAL_SERVER_ERROR as c_int
    };
    let mut memory = Vec::new();
    let mut spill: Option<File> = None;
    let mut len = 0u64;
    loop {
        // SAFETY: per the function contract.
        let chunk = unsafe { crate::client_io::read_block(r, READ_MAX) }.map_err(|_| {
            // Apache answered already when it refused the body itself; else the client is gone.
            // SAFETY: per the function contract.
            match unsafe { crate::client_io::ended_by_apache(r) } {
                Some(_) => DONE,
                None => HTTP_BAD_REQUEST as c_int,
            }
        })?;
        if chunk.is_empty() {
            break;
        }
        len += chunk.len() as u64;
        match spill.as_mut() {
            Some(file) => file
                .write_all(&chunk)
                .map_err(|e| failed("cannot write", e))?,
            None => {
                memory.extend_from_slice(&chunk);
                if memory.len() > MEMORY_MAX {
                    let mut file = temp_file().map_err(|e| failed("no temporary file for", e))?;
                    file.write_all(&memory)
                        .map_err(|e| failed("cannot write", e))?;
                    memory = Vec::new();
                    spill = Some(file);
                }
            }
        }
    }
    let body = match &spill {
        // SAFETY: the descriptor stays open in `Prepared::spill` while the app runs, and nothing
        // writes to the file any more.
        Some(file) => unsafe {
            Body::from_segments(vec![Segment::File {
                fd: file.as_raw_fd(),
                offset: 0,
                len,
            }])
        },
        None => Body::from_vec(memory),
    };
    Ok(Prepared {
        body: RequestBody::Buffered(body),
        dechunked_len: Some(len),
        spill,
    })
}

/// An anonymous file in the temporary directory (`TMPDIR`, else /tmp), gone when closed.
fn temp_file() -> io::Result<File> {
    let dir = std::env::temp_dir();
    let anonymous = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir);
    if let Ok(file) = anonymous {
        return Ok(file);
    }
    // A file system without O_TMPFILE: a named file, unlinked at once.
    let path = dir.join(format!(
        "ngx-wsgi-body-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// A body read as the app asks for it, through Apache's input filters: on the request's own
/// thread only (Apache's request and its filters are not thread-safe), never once the request is
/// over, and in turns with the request's deadline, which may answer it meanwhile.
struct ClientBody {
    side: Arc<Side>,
    /// The MPM thread that serves the request.
    owner: std::thread::ThreadId,
    cancelled: std::sync::atomic::AtomicBool,
}

impl BodySource for ClientBody {
    fn read(&self, max: usize) -> io::Result<Vec<u8>> {
        if self.cancelled.load(std::sync::atomic::Ordering::Acquire) {
            return Err(io::Error::other("the request is over"));
        }
        if std::thread::current().id() != self.owner {
            return Err(io::Error::other(
                "wsgi.input streams from the client on the request's own thread only under Apache \
                 (read it there, or set NgxWsgiRequestBuffering On for a body read whole first)",
            ));
        }
        self.side.read_body(max)
    }

    fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::Release);
    }
}
