//! Copies an ASGI HTTP scope out of `ngx_http_request_t` (on the event loop), from what nginx
//! parsed: no second parse of the request.

use nginx_sys::{
    ngx_connection_local_sockaddr, ngx_escape_uri, ngx_http_complex_value, ngx_http_request_t,
    ngx_int_t, ngx_str_t, ngx_uint_t, NGX_ESCAPE_URI, NGX_HTTP_VERSION_10, NGX_HTTP_VERSION_20,
    NGX_HTTP_VERSION_9, NGX_OK,
};
use ngx_wsgi::asgi::scope::{HttpScopeBuilder, ScopeField};
use ngx_wsgi::asgi::HttpScope;

use crate::conf::LocConf;
use crate::ffi::ngx_bytes;
use crate::request_info::{for_each_request_header, inet_port};

/// NGX_HTTP_VERSION_30 (nginx 1.25+; spelled out to build against older nginx too).
const HTTP_VERSION_30: u32 = 3000;

fn http_version(version: u32) -> &'static str {
    match version {
        NGX_HTTP_VERSION_9 | NGX_HTTP_VERSION_10 => "1.0",
        NGX_HTTP_VERSION_20 => "2",
        HTTP_VERSION_30 => "3",
        _ => "1.1",
    }
}

/// The request's scope; `body_length`, when the body's length replaces the request's framing
/// (see `request_info::AppBody`).
///
/// # Safety
/// `r` is a live request on the event loop.
pub(crate) unsafe fn collect(
    r: *mut ngx_http_request_t,
    lc: &LocConf,
    request_id_var: Option<ngx_uint_t>,
    body_length: Option<u64>,
) -> HttpScope {
    // SAFETY: per the function contract.
    let https = unsafe { lc.scheme.https(r) };
    // SAFETY: per the function contract.
    let r = unsafe { &mut *r };
    // SAFETY: a live request has a live connection.
    let c = unsafe { &mut *r.connection };
    // nginx's own text of the local address (what `$server_addr` shows).
    // Room for a unix socket's `unix:` and path (108 bytes at most).
    let mut text = [0u8; 128];
    let mut local_ip = ngx_str_t {
        len: text.len(),
        data: text.as_mut_ptr(),
    };
    // SAFETY: the connection is live; nginx writes at most `len` bytes into `text` and fills
    // `c->local_sockaddr` (getsockname for wildcard listeners).
    let rc = unsafe { ngx_connection_local_sockaddr(c, &mut local_ip, 0) };
    let server = (rc == NGX_OK as ngx_int_t).then(|| {
        // SAFETY: set by the call above.
        let port = unsafe { inet_port(c.local_sockaddr.cast()) };
        let host = &text[..local_ip.len];
        // ASGI's unix socket server is `[path, None]`.
        let host = match port {
            Some(_) => host,
            None => host.strip_prefix(b"unix:").unwrap_or(host),
        };
        (host, port)
    });
    let mut request_id: &[u8] = &[];
    if let Some(index) = request_id_var {
        // SAFETY: the index is `$request_id`'s, registered at configuration; on the loop.
        if let Some(id) = unsafe { crate::request_id::of(r, index) } {
            request_id = id;
        }
    }
    let path = ngx_bytes(&r.uri);
    let target = ngx_bytes(&r.unparsed_uri);
    // A rewrite or an internal redirect (try_files, error_page, X-Accel-Redirect) changed the URI:
    // raw_path is the new one, escaped, as `proxy_pass` sends it (BlackSheep routes on raw_path,
    // which must agree with path, and begin with root_path).
    let changed_raw_path = if r.valid_unparsed_uri() == 0 {
        escaped_uri(path)
    } else {
        Vec::new()
    };
    let (root_path, _) = ngx_wsgi::environ::split_mount(path, lc.app.script_name.as_slice());
    let client = ngx_bytes(&c.addr_text);
    // One pass to size the arena, so that it is one allocation.
    let mut header_bytes = 0;
    let mut header_count = 0;
    // SAFETY: the request's header list is live and not modified while we read it.
    unsafe {
        for_each_request_header(r, |name, value| {
            header_bytes += name.len() + value.len();
            header_count += 1;
        })
    };
    let method = ngx_bytes(&r.method_name);
    let query = ngx_bytes(&r.args);
    let size = method.len()
        + path.len()
        + target.len()
        + changed_raw_path.len()
        + query.len()
        + root_path.len()
        + client.len()
        + server.map_or(0, |(host, _)| host.len())
        + request_id.len()
        + header_bytes;
    let mut b = HttpScopeBuilder::with_capacity(size, header_count);
    b.http_version(http_version(r.http_version as u32))
        .https(https)
        .pathsend(lc.asgi_http.pathsend != 0)
        // SAFETY: `r` is live on the event loop.
        .log_route(unsafe { crate::ffi::log::route_of(r) })
        .set(ScopeField::Method, method)
        .set(ScopeField::Path, path)
        .set(ScopeField::Target, target)
        .set(ScopeField::ChangedRawPath, &changed_raw_path)
        .set(ScopeField::QueryString, query)
        .set(ScopeField::RootPath, root_path)
        .set(ScopeField::RequestId, request_id);
    // SAFETY: the connection's peer address is set for every accepted connection.
    b.client(client, unsafe { inet_port(c.sockaddr.cast()) });
    if let Some((host, port)) = server {
        b.server(host, port);
    }
    // SAFETY: `r` is live on the event loop.
    let set = unsafe { param_headers(r, lc) };
    let framing = |name: &[u8]| {
        name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
    };
    let reframed = body_length.is_some();
    // SAFETY: as above.
    unsafe {
        for_each_request_header(r, |name, value| {
            let replaced = set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
            let dropped = replaced || (reframed && framing(name));
            if !dropped {
                b.header(name, value);
            }
        })
    };
    if let Some(length) = body_length {
        // Whatever a location's `wsgi_param` would say of the request's.
        b.header(b"content-length", length.to_string().as_bytes());
    }
    for (name, value) in set.iter() {
        if let Some(value) = value.as_deref().filter(|_| !(reframed && framing(name))) {
            b.header(name, value);
        }
    }
    b.build()
}

/// The request headers the location's `wsgi_param HTTP_*` set, as `proxy_set_header` does for a
/// proxied app (an ASGI app has no environ for the others): `HTTP_X_REMOTE_USER $remote_user`
/// is `x-remote-user`, which replaces the client's header of that name (None: an empty value with
/// `if_not_empty`, which leaves the app none, never the client's).
///
/// # Safety
/// `r` is a live request on the event loop.
unsafe fn param_headers<'a>(
    r: &mut ngx_http_request_t,
    lc: &'a LocConf,
) -> Vec<(&'a [u8], Option<Vec<u8>>)> {
    let mut set: Vec<(&[u8], Option<Vec<u8>>)> = Vec::new();
    for param in &lc.params.0 {
        let Some(name) = param.asgi_header.as_deref() else {
            continue;
        };
        let mut value = ngx_str_t::empty();
        // SAFETY: the compiled value belongs to the configuration, live for the request; the
        // result is allocated from the request's pool.
        if unsafe { ngx_http_complex_value(r, param.value, &mut value) } != NGX_OK as ngx_int_t {
            continue;
        }
        let value = ngx_bytes(&value);
        let value = (!(param.if_not_empty && value.is_empty())).then(|| value.to_vec());
        // A later one of the same name wins, as in the environ.
        set.retain(|(n, _)| *n != name);
        set.push((name, value));
    }
    set
}

/// `uri` escaped as nginx escapes a changed URI it sends on (`NGX_ESCAPE_URI`).
fn escaped_uri(uri: &[u8]) -> Vec<u8> {
    // SAFETY: with a NULL destination nginx only counts the bytes to escape in `uri`.
    let escapes = unsafe {
        ngx_escape_uri(
            std::ptr::null_mut(),
            uri.as_ptr().cast_mut(),
            uri.len(),
            NGX_ESCAPE_URI as ngx_uint_t,
        )
    };
    let mut out = vec![0u8; uri.len() + 2 * escapes];
    // SAFETY: `out` has room for every byte of `uri` plus two for each one escaped.
    unsafe {
        ngx_escape_uri(
            out.as_mut_ptr(),
            uri.as_ptr().cast_mut(),
            uri.len(),
            NGX_ESCAPE_URI as ngx_uint_t,
        )
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_asgi_names_them() {
        assert_eq!(http_version(NGX_HTTP_VERSION_10), "1.0");
        assert_eq!(http_version(nginx_sys::NGX_HTTP_VERSION_11), "1.1");
        assert_eq!(http_version(NGX_HTTP_VERSION_20), "2");
        assert_eq!(http_version(HTTP_VERSION_30), "3");
    }
}
