//! What a pool thread does once it is started: drain a queue of requests. The executors
//! ([`crate::elastic_pool`], [`crate::nginx_pool`]) start threads that call it; the queue
//! ([`crate::dispatch`]) says what draining is.

/// A queue whose requests a pool thread runs.
pub(crate) trait Drain: Sync + 'static {
    /// Runs queued requests on the calling thread while there are any.
    fn drain(&'static self);
}
