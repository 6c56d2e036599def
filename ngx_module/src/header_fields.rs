//! The app's response headers that nginx's own modules look up by name in `headers_out`, as
//! nginx's proxy fills them for a proxied response: without them, `expires` added a second
//! `Expires` and `Cache-Control` beside the app's, `auth_request` dropped the app's
//! `WWW-Authenticate` from its 401, `slice` found no `Content-Range` in the app's 206, and gzip
//! left the app's `Accept-Ranges` on a body it compressed.

#[cfg(not(ngx_table_elt_next))]
use nginx_sys::{ngx_array_push, ngx_palloc};
use nginx_sys::{ngx_http_headers_out_t, ngx_http_request_t, ngx_parse_http_time, ngx_table_elt_t};

/// Points `out`'s field for the header `name` at `h` (a header of `out.headers`), if nginx has
/// one for it.
///
/// # Safety
/// `r` is live on the event loop; `out` is its `headers_out`; `h` is a header of `out.headers`
/// with its value set.
pub(crate) unsafe fn note(
    r: *mut ngx_http_request_t,
    out: &mut ngx_http_headers_out_t,
    name: &[u8],
    h: *mut ngx_table_elt_t,
) -> Result<(), ()> {
    let is = |header: &[u8]| name.eq_ignore_ascii_case(header);
    // SAFETY: per the function contract.
    unsafe {
        if is(b"server") {
            // The app's own Server and Date replace nginx's instead of doubling them.
            out.server = h;
        } else if is(b"date") {
            out.date = h;
        } else if is(b"content-encoding") {
            // Lets the gzip filter see that the body is already encoded.
            out.content_encoding = h;
        } else if is(b"etag") {
            // nginx's range filter checks If-Range against it (a resumed download), and the
            // gzip filter weakens it for what it compresses.
            out.etag = h;
        } else if is(b"last-modified") {
            let time = ngx_parse_http_time((*h).value.data, (*h).value.len);
            if time != nginx_sys::NGX_ERROR as nginx_sys::time_t {
                // If-Range's date form; the header stays the app's, not written twice.
                out.last_modified_time = time;
                out.last_modified = h;
            }
        } else if is(b"expires") {
            out.expires = h;
        } else if is(b"content-range") {
            out.content_range = h;
        } else if is(b"accept-ranges") {
            out.accept_ranges = h;
        } else if is(b"cache-control") {
            add_cache_control(r, out, h)?;
        } else if is(b"www-authenticate") {
            add_www_authenticate(out, h);
        }
    }
    Ok(())
}

/// Appends `h` to the field's chain (nginx 1.23 on): every header of that name, in order.
///
/// # Safety
/// `field` points at a `headers_out` field whose chain is made of live headers.
#[cfg(ngx_table_elt_next)]
unsafe fn append(field: *mut *mut ngx_table_elt_t, h: *mut ngx_table_elt_t) {
    // SAFETY: per the function contract.
    unsafe {
        let mut last = field;
        while !(*last).is_null() {
            last = &mut (**last).next;
        }
        (*h).next = std::ptr::null_mut();
        *last = h;
    }
}

/// # Safety
/// As [`note`].
#[cfg(ngx_table_elt_next)]
unsafe fn add_cache_control(
    _r: *mut ngx_http_request_t,
    out: &mut ngx_http_headers_out_t,
    h: *mut ngx_table_elt_t,
) -> Result<(), ()> {
    // SAFETY: per the function contract.
    unsafe { append(&mut out.cache_control, h) };
    Ok(())
}

/// nginx before 1.23 keeps the `Cache-Control` headers in an array of pointers, made on first
/// use.
///
/// # Safety
/// As [`note`].
#[cfg(not(ngx_table_elt_next))]
unsafe fn add_cache_control(
    r: *mut ngx_http_request_t,
    out: &mut ngx_http_headers_out_t,
    h: *mut ngx_table_elt_t,
) -> Result<(), ()> {
    const SLOT: usize = std::mem::size_of::<*mut ngx_table_elt_t>();
    // SAFETY: per the function contract; the array's storage comes from the request's pool.
    unsafe {
        let list = &mut out.cache_control;
        if list.elts.is_null() {
            let elts = ngx_palloc((*r).pool, SLOT);
            if elts.is_null() {
                return Err(());
            }
            list.elts = elts;
            list.nelts = 0;
            list.size = SLOT;
            list.nalloc = 1;
            list.pool = (*r).pool;
        }
        let slot = ngx_array_push(list) as *mut *mut ngx_table_elt_t;
        if slot.is_null() {
            return Err(());
        }
        *slot = h;
    }
    Ok(())
}

/// # Safety
/// As [`note`].
#[cfg(ngx_table_elt_next)]
unsafe fn add_www_authenticate(out: &mut ngx_http_headers_out_t, h: *mut ngx_table_elt_t) {
    // SAFETY: per the function contract.
    unsafe { append(&mut out.www_authenticate, h) };
}

/// nginx before 1.23 has one `WWW-Authenticate` (which `auth_request` copies): the app's first
/// challenge.
///
/// # Safety
/// As [`note`].
#[cfg(not(ngx_table_elt_next))]
unsafe fn add_www_authenticate(out: &mut ngx_http_headers_out_t, h: *mut ngx_table_elt_t) {
    if out.www_authenticate.is_null() {
        out.www_authenticate = h;
    }
}
