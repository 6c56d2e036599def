//! What a pool thread does once it is started: drain a queue of requests. The executors
//! ([`crate::elastic_pool`], [`crate::nginx_pool`]) start threads that call it; the queue
//! ([`crate::dispatch`]) says what draining is.

/// A queue whose requests a pool thread runs.
pub(crate) trait Drain: Sync + 'static {
    /// Runs queued requests on the calling thread while there are any.
    fn drain(&'static self);

    /// For a thread about to wait for work, once it can be called: whether requests wait
    /// that no drainer is on its way to (their submitter found every thread busy while this
    /// one was between its last look at the queue and its wait). If so the calling thread is
    /// counted as on its way, and drains, or gives the claim back with [`Drain::unclaim`].
    fn claim_waiting(&self) -> bool {
        false
    }

    /// Gives back a claim the thread could not use (it was called meanwhile).
    fn unclaim(&self) {}
}
