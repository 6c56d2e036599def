//! The request's read and write handlers while its app runs: the response's writes, an
//! unbuffered body's arrival, a client's going, a WebSocket's bytes.

use nginx_sys::{ngx_http_request_t, ngx_post_event, ngx_posted_events};

use crate::ffi::guard;

use super::early_end::{gone_while_queued, handshake_gone_while_queued};
use super::{served, Served};

/// The read and write handler of an upgraded request: its WebSocket moves frames.
pub(super) unsafe extern "C" fn on_ws_io(r: *mut ngx_http_request_t) {
    guard("the websocket connection", (), || {
        // SAFETY: nginx calls this on the event loop with the live request.
        unsafe {
            if let Some(Served::Ws(ws)) = served(r) {
                ws.on_io();
            }
        }
    })
}

/// While the response goes out: the client can take more.
pub(super) unsafe extern "C" fn on_client_writable(r: *mut ngx_http_request_t) {
    guard("the asgi stream writer", (), || {
        // SAFETY: nginx calls this on the event loop with the live request.
        unsafe {
            if let Some(served) = served(r) {
                served.stream().on_writable(r);
            }
        }
    })
}

/// Once the body is in: notices a client that goes away while the app runs.
pub(super) unsafe extern "C" fn on_client_readable(r: *mut ngx_http_request_t) {
    guard("the asgi client watcher", (), || {
        // SAFETY: as in `on_client_writable`; nginx calls this for the request's read event,
        // where the request may be ended.
        unsafe { watch_client(r, true) }
    })
}

/// Whether the client went away; if so the app is told. `may_end`: called for the request's
/// read event, so a request the loop has not started yet ends now. Not from inside nginx's
/// content handler (`post`), which finalizes the request after its return: ended there, the
/// request would be freed first.
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(super) unsafe fn watch_client(r: *mut ngx_http_request_t, may_end: bool) {
    // SAFETY: per the function contract.
    unsafe {
        let Some(served) = served(r) else { return };
        let left = match may_end {
            true => crate::client_watch::client_left(r),
            false => crate::client_watch::left_with_its_request(r),
        };
        if !left {
            return;
        }
        match served {
            Served::Http(request) => request.client_gone(),
            Served::Ws(ws) => ws.client_gone(),
        }
        if !may_end {
            // The close came with the request, and its event is spent: a posted one comes
            // back here once nginx's content handler is over, to end a request the loop has
            // not started yet.
            (*r).read_event_handler = Some(on_client_readable);
            ngx_post_event(
                (*(*r).connection).read,
                std::ptr::addr_of_mut!(ngx_posted_events),
            );
            return;
        }
        // Its own reference: ending the request frees the one its pool holds.
        match served.clone() {
            Served::Http(request) => gone_while_queued(&request),
            Served::Ws(ws) => handshake_gone_while_queued(&ws),
        }
    }
}

/// An unbuffered body: the client sent more (or went away); once the body is in, the request
/// watches the client.
pub(super) unsafe extern "C" fn on_body_data(r: *mut ngx_http_request_t) {
    guard("the asgi request body reader", (), || {
        // SAFETY: nginx calls this on the event loop with the live request.
        unsafe {
            let Some(Served::Http(request)) = served(r) else {
                return;
            };
            let failed = request.body.as_ref().is_some_and(|body| body.pull(r));
            if (*(*r).connection).error() != 0 {
                request.client_gone();
                gone_while_queued(&request.clone());
            } else if (*r).reading_body() == 0 || failed {
                (*r).read_event_handler = Some(on_client_readable);
                on_client_readable(r);
            }
        }
    })
}
