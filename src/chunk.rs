//! A piece of a streamed response body on its way to the server: bytes of its own, or (for large
//! pieces) the app's `bytes` object itself, kept alive instead of copied.
//!
//! The server drops pieces on its own thread, without the GIL. A dropped Python piece is queued,
//! and the next request that runs Python releases the queue in one go.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Pieces at least this long are lent rather than copied: below it a copy costs less than the
/// deferred release.
pub(crate) const LEND_AT: usize = 8192;

/// The bytes of one piece.
pub struct Chunk {
    ptr: *const u8,
    len: usize,
    owner: Owner,
}

enum Owner {
    /// The vector the bytes are in: never read through, only kept until the piece is dropped.
    Rust { _bytes: Vec<u8> },
    /// A strong reference to an immutable `bytes` object that holds the data.
    Python(*mut ffi::PyObject),
}

// SAFETY: the data is immutable while the chunk lives (a Vec it owns, or a `bytes` object it
// holds a reference to); the reference is only released with the GIL (see `Drop`).
unsafe impl Send for Chunk {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// A piece that owns its bytes.
    pub fn from_vec(data: Vec<u8>) -> Chunk {
        Chunk {
            ptr: data.as_ptr(),
            len: data.len(),
            owner: Owner::Rust { _bytes: data },
        }
    }

    /// The first `len` bytes of `bytes`, lent when long enough, else copied.
    pub(crate) fn from_bytes(bytes: &Bound<'_, PyBytes>, len: usize) -> Chunk {
        let data = &bytes.as_bytes()[..len];
        if len < LEND_AT {
            return Chunk::from_vec(data.to_vec());
        }
        Chunk {
            ptr: data.as_ptr(),
            len,
            owner: Owner::Python(bytes.clone().into_ptr()),
        }
    }
}

impl Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` and `len` describe data the owner keeps alive and unchanged.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} bytes)", self.len)
    }
}

struct Dropped(Vec<*mut ffi::PyObject>);
// SAFETY: the pointers are only dereferenced (decref'd) with the GIL held.
unsafe impl Send for Dropped {}

static DROPPED: Mutex<Dropped> = Mutex::new(Dropped(Vec::new()));
static DROPPED_COUNT: AtomicUsize = AtomicUsize::new(0);

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Owner::Python(obj) = self.owner {
            DROPPED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .push(obj);
            DROPPED_COUNT.fetch_add(1, Ordering::Release);
        }
    }
}

/// How many dropped pieces wait for their release.
#[cfg(test)]
pub(crate) fn waiting_for_release() -> usize {
    DROPPED.lock().unwrap_or_else(|e| e.into_inner()).0.len()
}

/// Releases the `bytes` objects of pieces the server is done with (the caller holds the GIL).
pub(crate) fn release_dropped(_py: Python<'_>) {
    if DROPPED_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let dropped = std::mem::take(&mut DROPPED.lock().unwrap_or_else(|e| e.into_inner()).0);
    DROPPED_COUNT.fetch_sub(dropped.len(), Ordering::AcqRel);
    for obj in dropped {
        // SAFETY: the GIL is held; each pointer is a strong reference this module took.
        unsafe { ffi::Py_DecRef(obj) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    #[test]
    fn large_pieces_are_lent_and_released_small_ones_copied() {
        with_python(|py| {
            let big = PyBytes::new(py, &vec![7u8; LEND_AT * 2]);
            // SAFETY: `big` is a live object; reading its count needs only the GIL, held here.
            let refs = || unsafe { ffi::Py_REFCNT(big.as_ptr()) };
            let small = PyBytes::new(py, b"tiny");
            let before = refs();
            let lent = Chunk::from_bytes(&big, LEND_AT + 1);
            let copied = Chunk::from_bytes(&small, 4);
            assert_eq!(lent.len(), LEND_AT + 1);
            assert!(lent.iter().all(|&b| b == 7));
            assert_eq!(lent.as_ptr(), big.as_bytes().as_ptr(), "no copy");
            assert_eq!(&*copied, b"tiny");
            assert_eq!(refs(), before + 1);
            // Dropped on a thread that never takes the GIL, as the server does (this thread
            // keeps the GIL meanwhile, so no other test releases the queue in between).
            std::thread::spawn(move || drop((lent, copied)))
                .join()
                .unwrap();
            assert_eq!(refs(), before + 1, "released only with the GIL");
            release_dropped(py);
            assert_eq!(refs(), before);
        });
    }
}
