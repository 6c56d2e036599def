//! An app's turn with a request, WSGI's pool thread or ASGI's task alike: what is counted when
//! the app gets it, what is let go when its turn ends (the app returned, or the server ended the
//! request without it), and the request's finalization. One order for every way a request ends,
//! so that no path forgets a count or runs them in another order.

use nginx_sys::{ngx_http_request_t, ngx_http_run_posted_requests, ngx_int_t};

use crate::request_body::BodyStream;
use crate::response::StreamEnd;
use crate::stream::Stream;

/// Which count of requests inside Python a request is in.
#[derive(Clone, Copy)]
pub(crate) enum AppKind {
    Wsgi,
    Asgi,
}

/// `r` was handed to its app (after `main_blocked::hold` and a successful submit): counted in
/// flight (the exit's wait), as work (busy hand-off) and toward `wsgi_max_requests`.
///
/// # Safety
/// Event-loop thread; `r` is live until [`end`].
pub(crate) unsafe fn begin(r: *mut ngx_http_request_t, kind: AppKind) {
    // SAFETY: per the function contract.
    unsafe {
        match kind {
            AppKind::Wsgi => crate::inflight::started(r),
            AppKind::Asgi => crate::inflight::started_asgi(r),
        }
        crate::busy_handoff::work_started();
        crate::recycle::request_started(r);
    }
}

/// The app's turn with `r` is over: the main request's hold and the counts of [`begin`] are let
/// go (a recycling worker may start its exit here), the request body stops being fed (a reader
/// still waiting fails) and the response stream sends what waits and says how it ended. The
/// caller then answers and calls [`finalize`].
///
/// # Safety
/// Event-loop thread; `r` is live, held, and begun.
pub(crate) unsafe fn end(
    r: *mut ngx_http_request_t,
    kind: AppKind,
    body: Option<&BodyStream>,
    stream: &Stream,
) -> StreamEnd {
    // SAFETY: per the function contract.
    unsafe {
        let c = (*r).connection;
        crate::main_blocked::release(r);
        match kind {
            AppKind::Wsgi => crate::inflight::finished(c),
            AppKind::Asgi => crate::inflight::finished_asgi(c),
        }
        crate::recycle::request_done();
        if let Some(body) = body {
            body.finish();
        }
        stream.finish(r)
    }
}

/// Finalizes `r` with `rc` (a cut response's connection reset where its close would read as
/// its end) and runs the requests nginx posted meanwhile (a subrequest's parent, say), as
/// nginx's own handlers do after an event.
///
/// # Safety
/// Event-loop thread; `r` is live, which this ends.
pub(crate) unsafe fn finalize(r: *mut ngx_http_request_t, rc: ngx_int_t) {
    // SAFETY: per the function contract; the connection structure outlives the request (it is
    // only marked destroyed), so posted requests can run after it.
    unsafe {
        let c = (*r).connection;
        crate::close_delimited::finalize(r, rc);
        ngx_http_run_posted_requests(c);
    }
}
