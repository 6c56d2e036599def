//! `NgxWsgiRequestTimeout`: a request still inside Python when its time is up is answered 504 at
//! once (the connection is closed after it), its Python stack goes to the error log and its
//! thread gets an asynchronous `TimeoutError` (the core's watchdog), so the MPM thread comes back
//! as soon as Python regains control; other requests are unaffected.
//!
//! The app runs on the request's own MPM thread, which cannot answer while it is inside Python:
//! the child's deadline thread writes the 504 in its place, in a turn of the request's
//! [`Side`], and from then on nothing the app produces reaches the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ngx_wsgi::{LogScope, RequestInfo, RequestWatch};

use crate::bindings::{request_rec, server_rec};
use crate::side::Side;

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
    /// When the app's thread started it (its duration at the deadline, for the metrics).
    armed_at: Instant,
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
            ngx_wsgi::metrics::timed_out(self.armed_at.elapsed());
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
            armed_at: Instant::now(),
        };
        crate::deadline::arm(Instant::now() + timeout, Arc::new(expiry))
    });
    Armed {
        side: side.clone(),
        ticket,
        watch,
    }
}
