//! The request path: Apache's worker thread reads the request's environ data, runs the app itself
//! (attached to the child's interpreter only while Python runs), and sends the response.

use std::ffi::c_int;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ngx_wsgi::{run_request, Apps};

use crate::bindings::{
    ap_conn_keepalive_e_AP_CONN_CLOSE, ap_discard_request_body, request_rec, DECLINED, DONE,
    HTTP_GATEWAY_TIME_OUT, HTTP_INTERNAL_SERVER_ERROR, OK,
};
use crate::ffi_guard::guard;
use crate::side::Side;

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
        let handler = crate::request_info::bytes((*r).handler);
        if handler == crate::metrics::HANDLER {
            return crate::metrics::handle(r);
        }
        let Some(conf) = crate::config::for_request(r) else {
            return DECLINED;
        };
        if !crate::translate::claims(handler) || !(conf.by_file() || crate::translate::claimed(r)) {
            return DECLINED;
        }
        // The app runs on this thread, and its body is iterated as the response goes out.
        let _mask = ngx_wsgi::signals::KeptThreadMask::note();
        let app = conf
            .app()
            .filter(|_| crate::lifecycle::ready())
            .and_then(Apps::get);
        let Some(app) = app else {
            crate::recycle::unloaded_app_asked();
            return HTTP_INTERNAL_SERVER_ERROR as c_int;
        };
        // From here to the response's end the thread is in the request: reading its body (into
        // memory that grows), in Python (the app, its iterable), sending its response.
        let _serving = crate::lifecycle::Serving::begin();
        // Recycling may have begun since post_read_request looked.
        crate::recycle::close_if_recycling(r);
        let side = Arc::new(Side::new(r));
        let prepared = match crate::request_body::prepare(r, conf.request_buffering(), &side) {
            Ok(p) => p,
            Err(status) => return status,
        };
        let info = crate::request_info::collect(r, conf.mount(), prepared.dechunked_len);
        let started = Instant::now();
        ngx_wsgi::metrics::started_in_place();
        let armed = crate::timeout::arm(r, &side, conf.request_timeout(), &info);
        let outcome = crate::log::with_request(r, &*side, || {
            guard("running the app", None, || {
                Some(run_request(
                    app,
                    &info,
                    prepared.body,
                    Some(side.clone()),
                    armed.watch(),
                ))
            })
        });
        ngx_wsgi::metrics::thread_finished(outcome.as_ref().map_or(Duration::ZERO, |o| o.gil_wait));
        let timed_out = armed.finish();
        drop(prepared.spill);
        ngx_wsgi::metrics::finished_outcome(outcome.as_ref(), started.elapsed(), timed_out);
        crate::recycle::request_done(r, side.head_sent());
        if side.ended_by_apache() {
            // Its answer (a 413, a 400) is the response: whatever the app made of the refused
            // body goes nowhere.
            return DONE;
        }
        if timed_out {
            // The deadline answered in the app's place; the connection closes after it. A
            // subrequest's parent (mod_include) learns of it from the status.
            return match side.is_subrequest() {
                true => HTTP_GATEWAY_TIME_OUT as c_int,
                false => OK as c_int,
            };
        }
        let Some(outcome) = outcome else {
            return HTTP_INTERNAL_SERVER_ERROR as c_int;
        };
        let rc = crate::response::send(r, outcome, &side);
        if rc == OK as c_int {
            // Whatever the app left unread is read and dropped so the connection can be kept
            // alive, once the response is out: a client whose upload the app refused (a 413)
            // gets the answer at once, and the status (one that drops the connection) or an
            // `Expect: 100-continue` never answered (the response says `Connection: close`)
            // leaves the rest unread. A body that fails meanwhile (over LimitRequestBody,
            // broken chunks) leaves the connection where the next request cannot be found.
            if ap_discard_request_body(r) != OK as c_int {
                (*(*r).connection).keepalive = ap_conn_keepalive_e_AP_CONN_CLOSE;
            }
        }
        rc
    }
}
