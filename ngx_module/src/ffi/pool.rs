//! Copies into a request's pool: nginx keeps pointers to response strings until the request is
//! freed, so what it is given must live in the request's own memory.

use nginx_sys::{ngx_http_request_t, ngx_pnalloc, ngx_str_t};

/// A copy of `bytes` in the request's pool, optionally lowercased, with a NUL after it (not
/// counted in its length): nginx's parser ends every header's name and value so, and modules
/// read them up to it (the slice filter parses `Content-Range` until its NUL).
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn pool_str(
    r: *mut ngx_http_request_t,
    bytes: &[u8],
    lowercase: bool,
) -> Result<ngx_str_t, ()> {
    // SAFETY: the request pool is live; the copy has `bytes.len()` bytes and the NUL.
    unsafe {
        let data = ngx_pnalloc((*r).pool, bytes.len() + 1) as *mut u8;
        if data.is_null() {
            return Err(());
        }
        let dst = std::slice::from_raw_parts_mut(data, bytes.len() + 1);
        dst[..bytes.len()].copy_from_slice(bytes);
        dst[bytes.len()] = 0;
        if lowercase {
            dst.make_ascii_lowercase();
        }
        Ok(ngx_str_t {
            len: bytes.len(),
            data,
        })
    }
}

/// A copy of `bytes` in the request's pool, living as long as the request.
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn pool_copy<'a>(r: *mut ngx_http_request_t, bytes: &[u8]) -> Option<&'a [u8]> {
    // SAFETY: per the function contract; the pool outlives the request's output.
    unsafe {
        let s = pool_str(r, bytes, false).ok()?;
        Some(std::slice::from_raw_parts(s.data, s.len))
    }
}
