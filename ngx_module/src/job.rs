//! One request's trip through the thread pool: everything the app needs (copied off nginx's
//! structures on the event loop), the channels its output and body use, its deadline and, once
//! the app is done, its outcome.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::Instant;

use nginx_sys::{ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_msec_t};
use ngx_wsgi::{Outcome, RequestBody, RequestInfo, RequestWatch};
use pyo3::{Py, PyAny};

use crate::ffi::module;
use crate::request_body::BodyStream;
use crate::stream::Stream;

/// Owned by the request's pool (freed by its cleanup), touched by the pool thread only while
/// the request is blocked on it, and then only by the runner (`handler::run`).
pub(crate) struct Job {
    pub request: *mut ngx_http_request_t,
    pub app: &'static Py<PyAny>,
    pub info: RequestInfo,
    /// The request body, until the pool thread takes it.
    pub body: Option<RequestBody>,
    /// Where a streamed response goes while the app runs.
    pub stream: Arc<Stream>,
    /// The request body, when it is read as it arrives.
    pub body_stream: Option<Arc<BodyStream>>,
    /// Finds the Python thread of this request, to interrupt it at its deadline.
    pub watch: Arc<RequestWatch>,
    /// `wsgi_read_timeout` of the location (0: none), and its timer.
    pub read_timeout: ngx_msec_t,
    pub deadline: ngx_event_t,
    /// Set when the deadline passed: how the 504 that went out in its place ended (`NGX_DONE`:
    /// the location's `error_page 504` answered, and the job holds a reference on the request).
    pub timed_out: Option<ngx_int_t>,
    /// It waited longer than `wsgi_queue_timeout` for a thread and never ran.
    pub expired: bool,
    /// The queue it waits in for a thread (set before it is queued).
    pub queue: Option<&'static dyn JobQueue>,
    /// Its deadline passed while a thread ran it: that thread is counted lost to the pool.
    pub holds_lost_slot: bool,
    /// When the request was handed to the pool.
    pub posted_at: Instant,
    pub outcome: Option<Outcome>,
}

/// The queue of the pool a job runs in, as the job's own handlers see it.
pub(crate) trait JobQueue: Sync {
    /// Takes `job` out if no thread has popped it yet (its client went away); whether it did.
    fn withdraw(&self, job: *mut Job) -> bool;
    /// A request this pool's thread runs passed its deadline: the thread is lost to the pool
    /// (and the worker's exit counts it so, `inflight::lost`) until it comes back (event-loop
    /// thread).
    fn slot_lost(&self);
    /// A thread [`JobQueue::slot_lost`] counted came back (event-loop thread).
    fn slot_back(&self);
}

impl Job {
    /// Makes `job` the request's module context, where its event handlers find it.
    ///
    /// # Safety
    /// Event-loop thread; `r` is live and `job` lives as long as the request.
    pub(crate) unsafe fn attach(r: *mut ngx_http_request_t, job: *mut Job) {
        // SAFETY: per the function contract; every request has a context slot per module.
        unsafe { *(*r).ctx.add(module().ctx_index) = job.cast::<c_void>() };
    }

    /// The job of a request this module serves (None before it was attached). A pointer, not a
    /// reference: while the pool thread runs the app, the event loop may only touch the fields
    /// it shares with it (the streams, the watch) and its own (the deadline).
    ///
    /// # Safety
    /// Event-loop thread; `r` is live.
    pub(crate) unsafe fn of(r: *mut ngx_http_request_t) -> Option<*mut Job> {
        // SAFETY: per the function contract; the slot holds NULL or the job attached above.
        let job = unsafe { *(*r).ctx.add(module().ctx_index) } as *mut Job;
        (!job.is_null()).then_some(job)
    }
}
