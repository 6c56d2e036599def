//! Copies what the app needs out of `ngx_http_request_t` (on the event loop), so the pool thread
//! never reads nginx's structures.

use nginx_sys::{
    ngx_connection_local_sockaddr, ngx_http_complex_value, ngx_http_request_t, ngx_int_t,
    ngx_list_part_t, ngx_str_t, ngx_table_elt_t, ngx_uint_t, NGX_HTTP_VERSION_10,
    NGX_HTTP_VERSION_11, NGX_HTTP_VERSION_20, NGX_HTTP_VERSION_9, NGX_OK,
};
use ngx::http::{HttpModuleServerConf, NgxHttpCoreModule};
use ngx_wsgi::environ::Field;
use ngx_wsgi::{Body, RequestInfo, RequestInfoBuilder, Segment};

use crate::conf::LocConf;
use crate::ffi::ngx_bytes;

/// Builds the request's environ data and, when nginx has read the whole body, its description
/// (`None` for a body read as it arrives).
///
/// # Safety
/// `r` is a live request on the event loop whose body has been read (or is read unbuffered).
pub(crate) unsafe fn collect(
    r: *mut ngx_http_request_t,
    lc: &LocConf,
    request_id_var: Option<ngx_uint_t>,
) -> (RequestInfo, Option<Body>) {
    // SAFETY: per the function contract.
    let r = unsafe { &mut *r };
    // SAFETY: a live request has a live connection.
    let c = unsafe { &mut *r.connection };
    let mut b = RequestInfoBuilder::with_capacity(1024);

    let (script_name, path_info) =
        ngx_wsgi::environ::split_mount(ngx_bytes(&r.uri), lc.app.script_name.as_slice());

    b.set(Field::RequestMethod, ngx_bytes(&r.method_name))
        .set(Field::ScriptName, script_name)
        .set(Field::PathInfo, path_info)
        .set(Field::QueryString, ngx_bytes(&r.args))
        .set(Field::RequestUri, ngx_bytes(&r.unparsed_uri))
        .set(Field::ServerProtocol, protocol(r.http_version as u32))
        .set(Field::RemoteAddr, ngx_bytes(&c.addr_text));

    // CGI's port of a unix socket is 0.
    // SAFETY: the connection's peer address is set for every accepted connection.
    let remote_port = unsafe { inet_port(c.sockaddr.cast()) }.unwrap_or(0);
    b.set(Field::RemotePort, decimal(&mut [0; 5], remote_port));
    // SAFETY: fills `c->local_sockaddr` (getsockname for wildcard listeners) on the loop thread.
    unsafe { ngx_connection_local_sockaddr(c, std::ptr::null_mut(), 0) };
    // SAFETY: set by the call above.
    let local_port = unsafe { inet_port(c.local_sockaddr.cast()) }.unwrap_or(0);
    b.set(Field::ServerPort, decimal(&mut [0; 5], local_port));
    let server_name = NgxHttpCoreModule::server_conf(r)
        .map(|s| ngx_bytes(&s.server_name))
        .unwrap_or(&[]);
    if server_name.is_empty() {
        // nginx's own text of the address (what `$server_addr` shows).
        // Room for a unix socket's `unix:` and path (108 bytes at most).
        let mut text = [0u8; 128];
        let mut local_ip = ngx_str_t {
            len: text.len(),
            data: text.as_mut_ptr(),
        };
        // SAFETY: the connection is live; nginx writes at most `len` bytes into `text`.
        let rc = unsafe { ngx_connection_local_sockaddr(c, &mut local_ip, 0) };
        // SAFETY: set for every accepted connection (the call above fills it if needed).
        let family = unsafe { i32::from((*c.local_sockaddr).sa_family) };
        if rc == NGX_OK as ngx_int_t && matches!(family, libc::AF_INET | libc::AF_INET6) {
            b.set(Field::ServerName, &text[..local_ip.len]);
        } else {
            b.set(Field::ServerName, b"localhost");
        }
    } else {
        b.set(Field::ServerName, server_name);
    }
    // SAFETY: per the function contract.
    b.https(unsafe { lc.scheme.https(r) });
    b.ignore_accel(lc.ignore_headers.headers());
    // SAFETY: per the function contract.
    b.intercept(unsafe { crate::intercept_errors::statuses(r, lc) });
    // SAFETY: per the function contract.
    b.log_route(unsafe { crate::ffi::log::route_of(r) });
    if let Some(index) = request_id_var {
        // SAFETY: the index is `$request_id`'s, registered at configuration; on the loop.
        if let Some(id) = unsafe { crate::request_id::of(r, index) } {
            b.request_id(id);
        }
    }

    // SAFETY: the request's header list is live and not modified while we read it.
    unsafe {
        for_each_request_header(r, |name, value| {
            b.header(name, value);
        })
    };

    for param in &lc.params.0 {
        let mut value = ngx_str_t::empty();
        // SAFETY: the compiled value belongs to the configuration, live for the request; the
        // result is allocated from the request's pool.
        if unsafe { ngx_http_complex_value(r, param.value, &mut value) } != NGX_OK as ngx_int_t {
            continue;
        }
        let value = ngx_bytes(&value);
        if !(param.if_not_empty && value.is_empty()) {
            b.param(&param.name, value);
        }
    }
    if r.request_body_no_buffering() != 0 {
        // Read as it arrives: the length is the client's (if it sent one).
        return (b.finish(), None);
    }
    // SAFETY: the body was read (or refused); its buffers and temp file live as long as the
    // request.
    let AppBody { body, length } = unsafe { app_body(r) };
    if let Some(length) = length {
        b.body_length(length);
    }
    (b.finish(), Some(body))
}

/// NGX_HTTP_VERSION_30 (nginx 1.25+; spelled out to build against older nginx too).
const HTTP_VERSION_30: u32 = 3000;

fn protocol(version: u32) -> &'static [u8] {
    match version {
        NGX_HTTP_VERSION_9 => b"HTTP/0.9",
        NGX_HTTP_VERSION_10 => b"HTTP/1.0",
        NGX_HTTP_VERSION_11 => b"HTTP/1.1",
        NGX_HTTP_VERSION_20 => b"HTTP/2.0",
        HTTP_VERSION_30 => b"HTTP/3.0",
        _ => b"HTTP/1.1",
    }
}

/// The authority of an absolute-form request target (`GET http://a.example:8080/x HTTP/1.1`),
/// by which nginx chose the server: RFC 9112 3.2.2 has an origin server ignore the `Host`
/// header then, which may name another site.
fn target_authority(r: &ngx_http_request_t) -> Option<&[u8]> {
    // HTTP/2 and HTTP/3 point `host_start`/`host_end` at the `:authority` value, held apart from
    // the request's other strings, and nginx gives that value as the Host header too: only an
    // HTTP/1 request line holds an absolute-form target, with its port before the path.
    if r.http_version >= NGX_HTTP_VERSION_20 as ngx_uint_t
        || r.host_start.is_null()
        || r.host_end.is_null()
        || r.request_start.is_null()
        || r.request_end.is_null()
        || r.host_start < r.request_start
        || r.host_end > r.request_end
    {
        return None;
    }
    // The port, when there is one, lies between the host and the path.
    let end = if !r.uri_start.is_null() && r.uri_start > r.host_end && r.uri_start <= r.request_end
    {
        r.uri_start
    } else {
        r.host_end
    };
    // SAFETY: all three lie within the request line (checked above), which stays in the
    // connection's header buffers for the request's life (nginx moves them with it to a large
    // buffer).
    unsafe {
        let len = usize::try_from(end.offset_from(r.host_start)).ok()?;
        Some(std::slice::from_raw_parts(r.host_start, len))
    }
}

/// The request's headers as the app gets them: with an absolute-form target, `Host` is the
/// target's authority (added when an HTTP/1.0 request sent none), as nginx routed it.
///
/// # Safety
/// `r`'s header list is live and not modified meanwhile.
pub(crate) unsafe fn for_each_request_header(
    r: &ngx_http_request_t,
    mut f: impl FnMut(&[u8], &[u8]),
) {
    let authority = target_authority(r);
    let mut had_host = false;
    // SAFETY: per the function contract.
    unsafe {
        for_each_header(&r.headers_in.headers.part, |name, value| match authority {
            Some(authority) if name.eq_ignore_ascii_case(b"host") => {
                had_host = true;
                f(name, authority)
            }
            _ => f(name, value),
        })
    };
    if let (Some(authority), false) = (authority, had_host) {
        f(b"Host", authority);
    }
}

/// # Safety
/// `part` is the first part of a live `ngx_list_t` of `ngx_table_elt_t`.
pub(crate) unsafe fn for_each_header(
    mut part: *const ngx_list_part_t,
    mut f: impl FnMut(&[u8], &[u8]),
) {
    while !part.is_null() {
        // SAFETY: each part holds `nelts` elements.
        let elts = unsafe {
            std::slice::from_raw_parts((*part).elts as *const ngx_table_elt_t, (*part).nelts)
        };
        for h in elts {
            if h.hash != 0 {
                f(ngx_bytes(&h.key), ngx_bytes(&h.value));
            }
        }
        // SAFETY: the list's parts are linked until `next` is NULL.
        part = unsafe { (*part).next };
    }
}

/// The body an app gets of a request nginx read whole (or refused), and the length it is given
/// in place of the request's framing when that does not say it: a body nginx de-chunked
/// (chunked, or HTTP/2 without a length), one that came with no length, and a refused one (0).
pub(crate) struct AppBody {
    pub(crate) body: Body,
    pub(crate) length: Option<u64>,
}

/// # Safety
/// `r` is live; its body has been read whole as the location says, or refused; the body's
/// buffers and temp file stay in place until the request is finalized.
pub(crate) unsafe fn app_body(r: &ngx_http_request_t) -> AppBody {
    // SAFETY: per the function contract.
    let (refused, body) = unsafe {
        match body_refused(r) {
            true => (true, Body::empty()),
            false => (false, body_of(r)),
        }
    };
    let had_length = !r.headers_in.content_length.is_null();
    let reframed = refused || r.headers_in.chunked() != 0 || (!had_length && !body.is_empty());
    let length = reframed.then(|| body.len());
    AppBody { body, length }
}

/// Whether the body nginx holds is not the request's whole body: nginx refused it (over
/// `client_max_body_size`, broken chunked framing) before the app's location came to read it,
/// an error page that runs an app (`error_page 413 /too-large;`), and threw it away, whole or
/// after a piece of it was kept; or a subrequest runs before its main request read it
/// (`auth_request`, `mirror_request_body off`). The app gets none (a length of 0), as
/// `proxy_pass` sends none, not that piece as if it were the body, nor a length with no body.
///
/// # Safety
/// `r` is live; its body has been read as the location says, or refused.
unsafe fn body_refused(r: &ngx_http_request_t) -> bool {
    if r.request_body_no_buffering() != 0 {
        // Read as it arrives: it is not over yet, and nothing was refused before it began.
        return false;
    }
    if r.discard_body() != 0 {
        return true;
    }
    let header = r.headers_in.content_length;
    // SAFETY: the header, when set, lives in the request's pool.
    let declared = (!header.is_null())
        .then(|| unsafe { ngx_bytes(&(*header).value) })
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
    if declared.is_some_and(|n| n != r.headers_in.content_length_n) {
        // nginx counts a Content-Length body down as it throws it away.
        return true;
    }
    if !(declared.is_some_and(|n| n > 0) || r.headers_in.chunked() != 0) {
        return false;
    }
    // A body was announced: a whole one was read to its end (`rest` 0), and one without a
    // length given the length read. A refusal ends a read part-way; an HTTP/2 body nginx
    // refused is skipped, never read (`rest` -1), or refused at its last frame, read to its end
    // but given no length.
    let rb = r.request_body;
    // SAFETY: the request's body, when set, lives as long as the request.
    rb.is_null()
        || unsafe { (*rb).rest } != 0
        || (r.headers_in.chunked() != 0 && r.headers_in.content_length_n < 0)
}

/// # Safety
/// `r`'s body has been read and stays in place until the request is finalized.
pub(crate) unsafe fn body_of(r: &ngx_http_request_t) -> Body {
    let rb = r.request_body;
    if rb.is_null() {
        return Body::empty();
    }
    let mut segments = Vec::new();
    // SAFETY: the chain and its buffers belong to the live request body.
    unsafe {
        let mut cl = (*rb).bufs;
        while !cl.is_null() {
            let buf = &*(*cl).buf;
            if buf.in_file() != 0 && !buf.file.is_null() {
                let len = (buf.file_last - buf.file_pos) as u64;
                if len > 0 {
                    segments.push(Segment::File {
                        fd: (*buf.file).fd,
                        offset: buf.file_pos as u64,
                        len,
                    });
                }
            } else if !buf.pos.is_null() && buf.last > buf.pos {
                segments.push(Segment::Memory {
                    ptr: buf.pos,
                    len: buf.last.offset_from(buf.pos) as usize,
                });
            }
            cl = (*cl).next;
        }
        // SAFETY: the regions and descriptors stay valid while the request is blocked on the
        // task that uses the body, and the input object is detached when that task ends.
        Body::from_segments(segments)
    }
}

/// The port of an IP socket address; None for a unix socket's (or none).
///
/// # Safety
/// `sa` is NULL or a valid socket address.
pub(crate) unsafe fn inet_port(sa: *const libc::sockaddr) -> Option<u16> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the family says which structure `sa` is.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => Some(u16::from_be((*(sa as *const libc::sockaddr_in)).sin_port)),
            libc::AF_INET6 => Some(u16::from_be((*(sa as *const libc::sockaddr_in6)).sin6_port)),
            _ => None,
        }
    }
}

/// `n` in decimal, written into `buf` (a port fits in five digits).
fn decimal(buf: &mut [u8; 5], mut n: u16) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_by_nginx_version_number() {
        assert_eq!(protocol(NGX_HTTP_VERSION_10), b"HTTP/1.0");
        assert_eq!(protocol(NGX_HTTP_VERSION_11), b"HTTP/1.1");
        assert_eq!(protocol(NGX_HTTP_VERSION_20), b"HTTP/2.0");
        assert_eq!(protocol(HTTP_VERSION_30), b"HTTP/3.0");
        assert_eq!(protocol(NGX_HTTP_VERSION_9), b"HTTP/0.9");
    }

    #[test]
    fn ports_in_decimal() {
        for port in [0u16, 7, 80, 8080, 65535] {
            assert_eq!(decimal(&mut [0; 5], port), port.to_string().as_bytes());
        }
    }

    #[test]
    fn ports_of_socket_addresses() {
        // SAFETY: all-zero socket addresses are valid; the family says which one is read.
        unsafe {
            let mut v4: libc::sockaddr_in = std::mem::zeroed();
            v4.sin_family = libc::AF_INET as _;
            v4.sin_port = 8080u16.to_be();
            assert_eq!(
                inet_port((&v4 as *const libc::sockaddr_in).cast()),
                Some(8080)
            );
            let mut v6: libc::sockaddr_in6 = std::mem::zeroed();
            v6.sin6_family = libc::AF_INET6 as _;
            v6.sin6_port = 443u16.to_be();
            assert_eq!(
                inet_port((&v6 as *const libc::sockaddr_in6).cast()),
                Some(443)
            );
            let mut unix: libc::sockaddr_un = std::mem::zeroed();
            unix.sun_family = libc::AF_UNIX as _;
            assert_eq!(inet_port((&unix as *const libc::sockaddr_un).cast()), None);
            assert_eq!(inet_port(std::ptr::null()), None);
        }
    }
}
