//! `NgxWsgiRequestTimeout`: a request still inside Python when its time is up is answered 504 at
//! once (the connection is closed after it), its Python stack goes to the error log and its
//! thread gets an asynchronous `TimeoutError` (the core's watchdog), so the MPM thread comes back
//! as soon as Python regains control; other requests are unaffected.
//!
//! The app runs on the request's own MPM thread, which cannot answer while it is inside Python:
//! the child's deadline thread writes the 504 in its place, in a turn of the request's
//! [`Side`], and from then on nothing the app produces reaches the client.

use std::ffi::c_int;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ngx_wsgi::{LogScope, RequestInfo, RequestWatch};

use crate::bindings::{
    ap_conn_keepalive_e_AP_CONN_CLOSE, ap_get_conn_socket, ap_set_content_length,
    ap_set_content_type, apr_interval_time_t, apr_os_sock_get, apr_os_sock_t,
    apr_socket_timeout_get, apr_socket_timeout_set, request_rec, server_rec, APR_SUCCESS,
    HTTP_GATEWAY_TIME_OUT,
};
use crate::brigade::Out;
use crate::side::Side;

const BODY: &[u8] = b"<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n\
<title>504 Gateway Timeout</title>\n</head><body>\n<h1>Gateway Timeout</h1>\n\
<p>The application did not answer in time.</p>\n</body></html>\n";

/// A request's deadline, armed while its app runs.
pub(crate) struct Armed {
    side: Arc<Side>,
    ticket: Option<crate::deadline::Ticket>,
    watch: Option<Arc<RequestWatch>>,
}

impl Armed {
    /// Finds the request inside Python, for the core (None: no deadline).
    pub(crate) fn watch(&self) -> Option<&RequestWatch> {
        self.watch.as_deref()
    }

    /// The app is done: disarms the deadline; returns whether it answered the request.
    pub(crate) fn finish(mut self) -> bool {
        self.end()
    }

    fn end(&mut self) -> bool {
        if let Some(ticket) = self.ticket.take() {
            crate::deadline::disarm(ticket);
        }
        self.side.finish()
    }
}

impl Drop for Armed {
    /// Also when the handler unwinds: the deadline thread must never use a finished request.
    fn drop(&mut self) {
        self.end();
    }
}

/// What the deadline thread does for one request.
struct Expiry {
    side: Arc<Side>,
    watch: Arc<RequestWatch>,
    what: String,
    /// The request's virtual host and client, for the log entry.
    server: ServerRef,
    client: String,
}

struct ServerRef(*const server_rec);

// SAFETY: a server_rec belongs to the configuration, which lives as long as the child; it is only
// read (for logging).
unsafe impl Send for ServerRef {}
// SAFETY: as above.
unsafe impl Sync for ServerRef {}

impl ServerRef {
    fn get(&self) -> *const server_rec {
        self.0
    }
}

impl crate::deadline::Expire for Expiry {
    fn expire(&self) {
        self.side.expire(|| {
            ngx_wsgi::metrics::timed_out();
            let (server, client) = (ServerRef(self.server.0), self.client.clone());
            let scope: LogScope = Box::new(move |f| {
                // SAFETY: see ServerRef.
                unsafe { crate::log::with_server(server.get(), &client, f) }
            });
            self.watch
                .interrupt_in_background_with(self.what.clone(), scope);
        });
    }
}

/// Starts the request's deadline (`timeout` from now, None: none); `finish` the result when the
/// app is done.
///
/// # Safety
/// `r` is the live request of `side`, on the calling thread.
pub(crate) unsafe fn arm(
    r: *mut request_rec,
    side: &Arc<Side>,
    timeout: Option<Duration>,
    info: &RequestInfo,
) -> Armed {
    // Only a request with a deadline needs to be found inside Python.
    let watch = timeout.map(|_| Arc::new(RequestWatch::default()));
    let ticket = timeout.zip(watch.as_ref()).and_then(|(timeout, watch)| {
        let expiry = Expiry {
            side: side.clone(),
            watch: watch.clone(),
            what: format!(
                "NgxWsgiRequestTimeout: \"{}\" is still inside Python after {} ms",
                info.request_line().escape_debug(),
                timeout.as_millis()
            ),
            // SAFETY: per the function contract.
            server: ServerRef(unsafe { (*r).server }),
            client: String::from_utf8_lossy(info.field(ngx_wsgi::environ::Field::RemoteAddr))
                .into_owned(),
        };
        crate::deadline::arm(Instant::now() + timeout, Arc::new(expiry))
    });
    Armed {
        side: side.clone(),
        ticket,
        watch,
    }
}

/// Answers a timed-out request in its app's place: a 504 when nothing of the response went out
/// yet, else the end of what did, cut so that the client sees an incomplete response. The
/// connection is closed after it either way: its thread is still busy in Python.
///
/// # Safety
/// `r` is live and the calling thread has the request's turn; `out` is its brigade.
pub(crate) unsafe fn answer(r: *mut request_rec, out: &Out, head_sent: bool) {
    // SAFETY: per the function contract; strings and buckets come from the request's pool and
    // its connection's allocator, which only this thread uses during its turn.
    unsafe {
        let c = (*r).connection;
        (*c).keepalive = ap_conn_keepalive_e_AP_CONN_CLOSE;
        if head_sent {
            out.broken();
        } else {
            (*r).status = HTTP_GATEWAY_TIME_OUT as c_int;
            (*r).status_line = c"504 Gateway Timeout".as_ptr();
            ap_set_content_type(r, c"text/html; charset=iso-8859-1".as_ptr());
            ap_set_content_length(r, BODY.len() as i64);
            out.data(BODY);
        }
        out.eos();
        out.flush();
        // A connection of its own (not an HTTP/2 stream, whose socket is the whole connection's):
        // the answer is written without waiting for a client that does not read (the deadline
        // thread serves every request of the child), and the client sees the end at once.
        let sock = if (*c).master.is_null() {
            ap_get_conn_socket(c)
        } else {
            std::ptr::null_mut()
        };
        if sock.is_null() {
            out.pass();
            return;
        }
        let mut saved: apr_interval_time_t = 0;
        apr_socket_timeout_get(sock, &mut saved);
        apr_socket_timeout_set(sock, 0);
        out.pass();
        apr_socket_timeout_set(sock, saved);
        let mut fd: apr_os_sock_t = -1;
        if apr_os_sock_get(&mut fd, sock) == APR_SUCCESS as i32 {
            libc::shutdown(fd, libc::SHUT_WR);
        }
    }
}
