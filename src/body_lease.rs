//! A request body lent to an app that the server can take back: an ASGI app's task outlives
//! its request when the server ends it first (its deadline, the worker's exit), and the body's
//! memory and temp file go with the request. The task's reads and the server's taking back
//! exclude each other, so no read touches them after the server has the body back.

use std::sync::{Mutex, MutexGuard};

use crate::body::Body;

pub struct BodyLease {
    body: Mutex<Option<Body>>,
    len: u64,
}

impl BodyLease {
    pub fn new(body: Body) -> BodyLease {
        BodyLease {
            len: body.len(),
            body: Mutex::new(Some(body)),
        }
    }

    /// The body's length, which stays known after it was taken back.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `read` on the body, unless the server took it back (None). The server waits for the
    /// read to end before it frees what the body points at: keep it short (one copy).
    pub fn read<R>(&self, read: impl FnOnce(&Body) -> R) -> Option<R> {
        self.lock().as_ref().map(read)
    }

    /// The server takes the body back: once this returns, no read touches its memory or files.
    pub fn take_back(&self) {
        let body = self.lock().take();
        drop(body);
    }

    fn lock(&self) -> MutexGuard<'_, Option<Body>> {
        // A read that panicked left the body as it was (reads change nothing).
        self.body.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_until_taken_back_then_none() {
        let lease = BodyLease::new(Body::from_vec(b"abc".to_vec()));
        let mut out = [0u8; 3];
        assert_eq!(lease.read(|b| b.read_at(0, &mut out).unwrap()), Some(3));
        assert_eq!(&out, b"abc");
        lease.take_back();
        assert_eq!(lease.read(|b| b.len()), None);
        assert_eq!(lease.len(), 3, "the length stays known");
    }
}
