//! `$request_id` for requests that have none yet.
//!
//! nginx makes `$request_id` from 16 bytes of OpenSSL's `RAND_bytes`, which takes locks and
//! costs more than the rest of a small request's work on the event loop. Every request the app
//! serves needs an id (its log lines carry it), so when the variable has not been evaluated yet
//! the module stores one of its own, in nginx's format (32 hex digits), as the variable's value:
//! the access log and anything else that reads `$request_id` later sees the same id.

use nginx_sys::{ngx_http_request_t, ngx_pnalloc, ngx_uint_t};

use crate::ffi::loop_cell::LoopCell;

/// xoshiro256** state, seeded from the kernel once per worker (event loop only, see `of`).
static STATE: LoopCell<[u64; 4]> = LoopCell::new([0; 4]);

/// # Safety
/// Event-loop thread.
unsafe fn next() -> u64 {
    // SAFETY: per the function contract.
    let mut s = unsafe { STATE.get() };
    if s == [0; 4] {
        s = seed();
    }
    let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
    let t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(45);
    // SAFETY: per the function contract.
    unsafe { STATE.set(s) };
    result
}

fn seed() -> [u64; 4] {
    let mut s = [0u64; 4];
    // SAFETY: getrandom fills the 32 bytes of `s`.
    let n = unsafe { libc::getrandom(s.as_mut_ptr().cast(), 32, 0) };
    if n != 32 || s == [0; 4] {
        // No kernel entropy: still distinct per worker and per start.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        s = [
            now | 1,
            u64::from(std::process::id()),
            !now,
            0x9e37_79b9_7f4a_7c15,
        ];
    }
    s
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
            for (half, word) in [next(), next()].into_iter().enumerate() {
                for (i, byte) in word.to_be_bytes().into_iter().enumerate() {
                    let at = half * 16 + i * 2;
                    text[at] = HEX[usize::from(byte >> 4)];
                    text[at + 1] = HEX[usize::from(byte & 15)];
                }
            }
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
