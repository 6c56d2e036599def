//! Bucket brigades: APR builds them with ring macros that have no function form, so the one
//! operation the module needs (append a bucket) is written out here.

use std::mem::offset_of;

use crate::bindings::{
    ap_bucket_error_create, ap_pass_brigade, apr_brigade_cleanup, apr_brigade_create, apr_bucket,
    apr_bucket_brigade, apr_bucket_eos_create, apr_bucket_flush_create,
    apr_bucket_transient_create, apr_status_t, request_rec, APR_SUCCESS, HTTP_BAD_GATEWAY,
};

/// A brigade on a request's pool, passed down its output filters.
pub(crate) struct Out {
    r: *mut request_rec,
    bb: *mut apr_bucket_brigade,
}

impl Out {
    /// # Safety
    /// `r` is a live request; the brigade lives in its pool, so `Out` must not be used after the
    /// request has ended.
    pub(crate) unsafe fn new(r: *mut request_rec) -> Out {
        // SAFETY: per the function contract.
        let bb = unsafe { apr_brigade_create((*r).pool, (*(*r).connection).bucket_alloc) };
        Out { r, bb }
    }

    /// # Safety
    /// `e` is a bucket of this request's bucket allocator, in no brigade.
    pub(crate) unsafe fn append(&self, e: *mut apr_bucket) {
        // SAFETY: APR_BRIGADE_INSERT_TAIL: the brigade's list head acts as a bucket link whose
        // bucket (the sentinel) starts `offset_of!(apr_bucket, link)` bytes before it.
        unsafe {
            let head = std::ptr::addr_of_mut!((*self.bb).list) as *mut u8;
            let sentinel = head.sub(offset_of!(apr_bucket, link)) as *mut apr_bucket;
            let last = (*self.bb).list.prev;
            (*e).link.next = sentinel;
            (*e).link.prev = last;
            (*last).link.next = e;
            (*self.bb).list.prev = e;
        }
    }

    fn alloc(&self) -> *mut crate::bindings::apr_bucket_alloc_t {
        // SAFETY: the request and its connection are live (see `new`).
        unsafe { (*(*self.r).connection).bucket_alloc }
    }

    /// Appends `data`, which must stay untouched until the next `pass` returns (filters that
    /// keep it longer copy it).
    pub(crate) fn data(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // SAFETY: a transient bucket borrows `data` until the pass; see above.
        unsafe {
            self.append(apr_bucket_transient_create(
                data.as_ptr().cast(),
                data.len(),
                self.alloc(),
            ))
        }
    }

    pub(crate) fn flush(&self) {
        // SAFETY: a new bucket from the request's allocator.
        unsafe { self.append(apr_bucket_flush_create(self.alloc())) }
    }

    pub(crate) fn eos(&self) {
        // SAFETY: a new bucket from the request's allocator.
        unsafe { self.append(apr_bucket_eos_create(self.alloc())) }
    }

    /// Marks the response as broken: Apache then ends it without a clean end of message (no last
    /// chunk) and closes the connection, as it does for a proxied backend that failed mid-body.
    pub(crate) fn broken(&self) {
        // SAFETY: a new bucket from the request's allocator and pool.
        unsafe {
            self.append(ap_bucket_error_create(
                HTTP_BAD_GATEWAY as i32,
                std::ptr::null(),
                (*self.r).pool,
                self.alloc(),
            ))
        }
    }

    /// Sends what was appended down the output filters and empties the brigade; false when the
    /// client is gone.
    pub(crate) fn pass(&self) -> bool {
        // SAFETY: the request is live; cleanup empties the brigade for reuse.
        unsafe {
            let rv: apr_status_t = ap_pass_brigade((*self.r).output_filters, self.bb);
            apr_brigade_cleanup(self.bb.cast());
            rv == APR_SUCCESS as apr_status_t && (*(*self.r).connection).aborted == 0
        }
    }

    /// The raw brigade (to insert file buckets).
    pub(crate) fn raw(&self) -> *mut apr_bucket_brigade {
        self.bb
    }
}
