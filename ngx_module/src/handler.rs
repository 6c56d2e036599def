//! The request path on nginx's side: read the body, post the request to the thread pool, and send
//! the response when the pool thread is done.

use std::ffi::c_void;

use nginx_sys::{
    ngx_event_t, ngx_http_finalize_request, ngx_http_read_client_request_body, ngx_http_request_t,
    ngx_http_run_posted_requests, ngx_int_t, ngx_msec_t, ngx_pool_cleanup_add, NGX_DONE,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SERVICE_UNAVAILABLE, NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::HttpModuleConfExt;
use ngx_wsgi::{
    run_request, Apps, Body, Outcome, OutcomeKind, RequestBody, RequestInfo, RequestWatch,
};
use pyo3::Py;
use pyo3::PyAny;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{LocConf, MainConf};
use crate::ffi_guard::guard;
use crate::module;
use crate::request_body::BodyStream;
use crate::stream::Stream;

/// One request's trip through the thread pool. Owned by the request's pool (freed by its
/// cleanup), touched by the pool thread only while the request is blocked on it.
pub(crate) struct Job {
    pub(crate) request: *mut ngx_http_request_t,
    app: &'static Py<PyAny>,
    pub(crate) info: RequestInfo,
    body: Option<RequestBody>,
    /// Where a streamed response goes while the app runs.
    pub(crate) stream: Arc<Stream>,
    /// The request body, when it is read as it arrives.
    pub(crate) body_stream: Option<Arc<BodyStream>>,
    /// Finds the Python thread of this request, to interrupt it at its deadline.
    pub(crate) watch: Arc<RequestWatch>,
    /// `wsgi_read_timeout` of the location (0: none), and its timer.
    pub(crate) read_timeout: ngx_msec_t,
    pub(crate) deadline: ngx_event_t,
    /// Set when the deadline passed: how the 504 that went out in its place ended.
    pub(crate) timed_out: Option<ngx_int_t>,
    /// When the request was handed to the pool.
    posted_at: Instant,
    pub(crate) outcome: Option<Outcome>,
}

pub(crate) unsafe extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    guard(
        "the wsgi content handler",
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        || {
            // SAFETY: nginx passes a live request; the body handler runs once the body is read
            // (or, unbuffered, once reading has started) and owns the reference this call takes.
            let rc = unsafe {
                let lc = (*r).http_location_conf_unchecked::<LocConf>(module());
                if lc.is_some_and(|lc| lc.as_ref().request_buffering == 0) {
                    (*r).set_request_body_no_buffering(1);
                }
                ngx_http_read_client_request_body(r, Some(body_ready))
            };
            if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                return rc;
            }
            NGX_DONE as ngx_int_t
        },
    )
}

unsafe extern "C" fn body_ready(r: *mut ngx_http_request_t) {
    let status = guard(
        "reading the request body",
        Err(NGX_HTTP_INTERNAL_SERVER_ERROR),
        || {
            // SAFETY: nginx calls this with the live request whose body has been read.
            unsafe { post_job(r) }
        },
    );
    if let Err(status) = status {
        // SAFETY: the request is live and this releases the body-reading reference.
        unsafe { ngx_http_finalize_request(r, status as ngx_int_t) };
    }
}

unsafe fn post_job(r: *mut ngx_http_request_t) -> Result<(), u32> {
    // SAFETY: `r` is live; this location has wsgi_app, so its configuration is ours.
    let lc = unsafe {
        (*r).http_location_conf_unchecked::<LocConf>(module())
            .ok_or(NGX_HTTP_INTERNAL_SERVER_ERROR)?
            .as_ref()
    };
    let app = lc.app.and_then(Apps::get).ok_or_else(|| {
        crate::log::cycle_log(
            nginx_sys::NGX_LOG_ERR as usize,
            "wsgi: the app of this location is not loaded in this worker",
        );
        NGX_HTTP_INTERNAL_SERVER_ERROR
    })?;
    // SAFETY: `r` is live on the event loop thread.
    // SAFETY: `r` is live; every request has the http main configurations.
    let request_id_var = unsafe {
        (*r).http_main_conf_unchecked::<MainConf>(module())
            .and_then(|m| m.as_ref().request_id_var)
    };
    // SAFETY: `r` is live on the event loop thread.
    let (info, body) = unsafe { crate::request_info::collect(r, lc, request_id_var) };
    let (body, body_stream) = match body {
        Some(body) => (RequestBody::Buffered(body), None),
        None => {
            let stream = BodyStream::new(r, lc.stream_buffer);
            // SAFETY: `r` reads its body unbuffered; this takes what arrived so far.
            unsafe {
                stream.pull(r);
                (*r).read_event_handler = Some(crate::request_body::body_reader);
            }
            (RequestBody::Streamed(stream.clone()), Some(stream))
        }
    };
    let job = Box::into_raw(Box::new(Job {
        request: r,
        app,
        info,
        body: Some(body),
        stream: Stream::new(r, lc.stream_buffer),
        body_stream,
        watch: Arc::new(RequestWatch::default()),
        read_timeout: lc.read_timeout,
        // SAFETY: an all-zero ngx_event_t is nginx's own initial state for an event.
        deadline: unsafe { std::mem::zeroed() },
        timed_out: None,
        posted_at: Instant::now(),
        outcome: None,
    }));
    // SAFETY: the request pool is live; the cleanup frees the job when the request is destroyed,
    // which cannot happen while the task is outstanding (`blocked`).
    unsafe {
        let cln = ngx_pool_cleanup_add((*r).pool, 0);
        if cln.is_null() {
            drop(Box::from_raw(job));
            return Err(NGX_HTTP_INTERNAL_SERVER_ERROR);
        }
        (*cln).handler = Some(drop_job);
        (*cln).data = job.cast();
        // The stream's event handlers find the job here.
        *(*r).ctx.add(module().ctx_index) = job.cast();

        (*(*r).main).set_blocked((*(*r).main).blocked() + 1);
        if crate::dispatch::RunQueue::of(lc.thread_pool)
            .submit(job)
            .is_err()
        {
            (*(*r).main).set_blocked((*(*r).main).blocked() - 1);
            return Err(NGX_HTTP_SERVICE_UNAVAILABLE);
        }
        crate::inflight::started();
        crate::metrics::posted();
        crate::timeout::arm(job, lc.read_timeout);
    }
    Ok(())
}

unsafe extern "C" fn drop_job(data: *mut c_void) {
    guard("freeing a request", (), || {
        // SAFETY: `data` is the Box leaked in `post_job`, freed exactly once by this cleanup.
        drop(unsafe { Box::from_raw(data as *mut Job) });
    })
}

/// Runs on a pool thread: the app, and nothing of nginx's.
///
/// # Safety
/// `job` is live and touched by no other thread but for `stream`, which is shared.
pub(crate) unsafe fn run_job(job: *mut Job) {
    // SAFETY: per the function contract. Only the fields used here are borrowed: the event loop
    // reads `stream` meanwhile, and nothing else until completion.
    unsafe {
        let body = (*job)
            .body
            .take()
            .unwrap_or(RequestBody::Buffered(Body::empty()));
        let (app, info, sink) = ((*job).app, &(*job).info, (*job).stream.clone());
        crate::metrics::thread_started();
        let outcome = guard("running the app", None, || {
            Some(run_request(
                app,
                info,
                body,
                Some(sink),
                Some(&(*job).watch),
            ))
        });
        crate::metrics::thread_finished(outcome.as_ref().map_or(Duration::ZERO, |o| o.gil_wait));
        (*job).outcome = outcome;
    }
}

fn count_finished(job: &Job) {
    let (status, client_gone) = match (&job.timed_out, &job.outcome) {
        (Some(_), _) => (504, false),
        (None, None) => (500, false),
        (None, Some(o)) => match o.kind {
            OutcomeKind::Failed => (500, false),
            OutcomeKind::ClientGone => (499, true),
            _ => (crate::metrics::status_of(o.head.as_ref(), 500), false),
        },
    };
    crate::metrics::finished(
        status,
        job.posted_at.elapsed(),
        job.timed_out.is_some(),
        client_gone,
    );
}

/// Back on the event loop once the pool thread is done.
///
/// # Safety
/// Event-loop thread; `job` is live and no pool thread touches it any more.
pub(crate) unsafe fn complete(job: *mut Job) {
    // SAFETY: the job is alive until the request is destroyed; the request and its connection
    // stay valid while `blocked` was held.
    let (r, c) = unsafe {
        let r = (*job).request;
        (r, (*r).connection)
    };
    let sent = guard("sending the response", false, || {
        // SAFETY: as above; from here on the request may be finalized and the job freed.
        unsafe {
            (*(*r).main).set_blocked((*(*r).main).blocked() - 1);
            crate::inflight::finished();
            crate::recycle::request_done();
            crate::timeout::disarm(job);
            count_finished(&*job);
            if let Some(body) = &(*job).body_stream {
                body.finish();
            }
            crate::response::send(r, &*job);
        }
        true
    });
    // SAFETY: `r` and `c` are still valid if sending panicked before finalizing; the connection
    // structure outlives the request (it is only marked destroyed).
    unsafe {
        if !sent {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
        }
        ngx_http_run_posted_requests(c);
    }
}
