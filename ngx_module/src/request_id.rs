//! `$request_id` for requests that have none yet.
//!
//! nginx makes `$request_id` from 16 bytes of OpenSSL's `RAND_bytes`, which takes locks and
//! costs more than the rest of a small request's work on the event loop. Every request the app
//! serves needs an id (its log lines carry it), so when the variable has not been evaluated yet
//! the module stores one of its own, in nginx's format (32 hex digits), as the variable's value:
//! the access log and anything else that reads `$request_id` later sees the same id. The bytes
//! come from the kernel's CSPRNG (`getrandom`), fetched 256 ids at a time: as unguessable as
//! nginx's own, at one system call per 256 requests.

use std::cell::UnsafeCell;

use nginx_sys::{ngx_http_request_t, ngx_pnalloc, ngx_uint_t};

/// Random bytes fetched ahead, and how many are used (event loop only).
struct Batch {
    bytes: [u8; 4096],
    used: usize,
}

struct LoopBatch(UnsafeCell<Batch>);

// SAFETY: only `next_id`, whose contract is "event-loop thread only", touches the batch.
unsafe impl Sync for LoopBatch {}

static BATCH: LoopBatch = LoopBatch(UnsafeCell::new(Batch {
    bytes: [0; 4096],
    used: 4096,
}));

/// 16 unpredictable bytes, or None when the kernel has no randomness to give.
///
/// # Safety
/// Event-loop thread.
unsafe fn next_id() -> Option<[u8; 16]> {
    // SAFETY: per the function contract, no other reference to the batch exists.
    let batch = unsafe { &mut *BATCH.0.get() };
    if batch.used + 16 > batch.bytes.len() {
        fill(&mut batch.bytes).ok()?;
        batch.used = 0;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&batch.bytes[batch.used..batch.used + 16]);
    // Each batch byte is handed out once.
    batch.bytes[batch.used..batch.used + 16].fill(0);
    batch.used += 16;
    Some(id)
}

/// Fills `out` from the kernel's CSPRNG.
fn fill(out: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        // SAFETY: writes at most `out.len() - done` bytes into the rest of `out`.
        let n = unsafe { libc::getrandom(out[done..].as_mut_ptr().cast(), out.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// The request's `$request_id` (variable `index`): the value already there, or a new one stored
/// as the variable's cached value (valid while the request lives). None if the pool is out of
/// memory.
///
/// # Safety
/// Event-loop thread; `r` is live and `index` is the index of `$request_id`.
pub(crate) unsafe fn of<'r>(r: *mut ngx_http_request_t, index: ngx_uint_t) -> Option<&'r [u8]> {
    // SAFETY: per the function contract, `variables` has an entry for every indexed variable.
    unsafe {
        let v = &mut *(*r).variables.add(index);
        if v.valid() == 0 && v.not_found() == 0 {
            let data = ngx_pnalloc((*r).pool, 32) as *mut u8;
            if data.is_null() {
                return None;
            }
            let text = std::slice::from_raw_parts_mut(data, 32);
            // No randomness: nginx evaluates the variable itself later (with RAND_bytes).
            let id = next_id()?;
            hex(&id, text);
            v.data = data;
            v.set_len(32);
            v.set_valid(1);
            v.set_no_cacheable(0);
            v.set_not_found(0);
            v.set_escape(0);
        }
        if v.valid() == 0 || v.data.is_null() {
            return None;
        }
        Some(std::slice::from_raw_parts(v.data, v.len() as usize))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lowercase hex into `out` (twice as long).
fn hex(bytes: &[u8; 16], out: &mut [u8]) {
    for (i, byte) in bytes.iter().enumerate() {
        out[i * 2] = HEX[usize::from(byte >> 4)];
        out[i * 2 + 1] = HEX[usize::from(byte & 15)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_of_fresh_random_bytes() {
        let mut seen = std::collections::HashSet::new();
        // More than one batch; this test is the only user of the batch in the test process.
        for _ in 0..600 {
            // SAFETY: no other thread of the test process touches the batch.
            let id = unsafe { next_id() }.unwrap();
            assert!(seen.insert(id), "no id repeats");
        }
        let mut out = [0u8; 32];
        hex(&[0xab; 16], &mut out);
        assert_eq!(&out, b"abababababababababababababababab");
    }
}
