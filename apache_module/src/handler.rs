//! The request path: Apache's worker thread reads the request's environ data, runs the app itself
//! (attached to the child's interpreter only while Python runs), and sends the response.

use std::ffi::c_int;
use std::sync::Arc;

use ngx_wsgi::{run_request, Apps};

use crate::bindings::{
    ap_discard_request_body, request_rec, APLOG_ERR, DECLINED, HTTP_INTERNAL_SERVER_ERROR,
};
use crate::ffi_guard::guard;
use crate::stream::Stream;

pub(crate) unsafe extern "C" fn handler(r: *mut request_rec) -> c_int {
    guard(
        "the wsgi handler",
        HTTP_INTERNAL_SERVER_ERROR as c_int,
        // SAFETY: Apache passes a live request on the thread that serves it.
        || unsafe { serve(r) },
    )
}

/// # Safety
/// `r` is a live request on the calling thread.
unsafe fn serve(r: *mut request_rec) -> c_int {
    // SAFETY: per the function contract.
    unsafe {
        let Some(conf) = crate::config::for_request(r) else {
            return DECLINED;
        };
        if !claims(crate::request_info::bytes((*r).handler))
            || !(conf.by_file() || crate::translate::claimed(r))
        {
            return DECLINED;
        }
        let app = conf
            .app()
            .filter(|_| crate::lifecycle::ready())
            .and_then(Apps::get);
        let Some(app) = app else {
            crate::log::write(
                APLOG_ERR as c_int,
                "wsgi: the application of this location was not loaded in this process (see the error log at its start)",
            );
            return HTTP_INTERNAL_SERVER_ERROR as c_int;
        };
        let prepared = match crate::request_body::prepare(r, conf.request_buffering()) {
            Ok(p) => p,
            Err(status) => return status,
        };
        let info = crate::request_info::collect(r, conf.mount(), prepared.dechunked_len);
        let stream = Arc::new(Stream::new(r));
        let outcome = crate::log::with_request(r, || {
            run_request(app, &info, prepared.body, Some(stream.clone()), None)
        });
        drop(prepared.spill);
        // Whatever the app left unread is read and dropped so the connection can be kept alive.
        ap_discard_request_body(r);
        crate::response::send(r, outcome, &stream)
    }
}

/// The name `SetHandler` may give this module explicitly.
const HANDLER_NAME: &[u8] = b"ngx-wsgi";

/// Whether the app takes a request whose handler Apache set to `handler`: unless a `SetHandler`
/// (or `AddHandler`) named another handler, such as `default-handler` for static files or
/// `server-status` under an app's mount. A handler Apache derived from the content type (it holds
/// a `/`) names no handler.
pub(crate) fn claims(handler: &[u8]) -> bool {
    handler.is_empty() || handler == HANDLER_NAME || handler.contains(&b'/')
}
