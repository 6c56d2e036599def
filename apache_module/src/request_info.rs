//! The environ's data, read from Apache's parsed `request_rec` (never from the raw request).

use std::ffi::{c_char, CStr};

use ngx_wsgi::environ::Field;
use ngx_wsgi::{RequestInfo, RequestInfoBuilder};

use crate::bindings::{
    ap_run_generate_log_id, ap_ssl_conn_is_ssl, apr_sockaddr_t, apr_table_elts, apr_table_entry_t,
    apr_table_t, request_rec,
};

/// # Safety
/// `s` is NULL or a NUL-terminated string that outlives the returned slice.
pub(crate) unsafe fn bytes<'a>(s: *const c_char) -> &'a [u8] {
    if s.is_null() {
        &[]
    } else {
        // SAFETY: per the function contract.
        unsafe { CStr::from_ptr(s) }.to_bytes()
    }
}

/// # Safety
/// `sa` is NULL or a live APR socket address.
unsafe fn port(sa: *const apr_sockaddr_t) -> u16 {
    // SAFETY: per the function contract.
    unsafe { sa.as_ref().map_or(0, |sa| sa.port) }
}

/// Builds the request's environ data. `mount` is the app's `SCRIPT_NAME`; `dechunked_len` the
/// length of a body Apache received without one (chunked), which the app then sees as its
/// `CONTENT_LENGTH`.
///
/// # Safety
/// `r` is a live request on the calling thread.
pub(crate) unsafe fn collect(
    r: *mut request_rec,
    mount: &[u8],
    dechunked_len: Option<u64>,
) -> RequestInfo {
    // SAFETY: per the function contract; every string and table below belongs to the request
    // or its connection, which outlive this call.
    unsafe {
        let c = (*r).connection;
        let mut b = RequestInfoBuilder::with_capacity(1024);

        // Apache's `uri` is the percent-decoded, normalised path.
        let (script_name, path_info) = ngx_wsgi::environ::split_mount(bytes((*r).uri), mount);

        b.set(Field::RequestMethod, bytes((*r).method))
            .set(Field::ScriptName, script_name)
            .set(Field::PathInfo, path_info)
            .set(Field::QueryString, bytes((*r).args))
            .set(Field::RequestUri, bytes((*r).unparsed_uri))
            .set(Field::ServerProtocol, bytes((*r).protocol))
            // The address mod_remoteip may have replaced, like nginx's realip.
            .set(Field::RemoteAddr, bytes((*r).useragent_ip))
            .set(
                Field::RemotePort,
                port((*r).useragent_addr).to_string().as_bytes(),
            )
            .set(
                Field::ServerPort,
                port((*c).local_addr).to_string().as_bytes(),
            );
        let server_name = bytes((*(*r).server).server_hostname);
        if server_name.is_empty() {
            b.set(Field::ServerName, bytes((*c).local_ip));
        } else {
            b.set(Field::ServerName, server_name);
        }
        let mut https = ap_ssl_conn_is_ssl(c) != 0;
        if let Some(conf) = crate::config::for_request(r) {
            b.ignore_accel(conf.ignored_accel());
        }

        if (*r).log_id.is_null() {
            // The id Apache's error log shows with `%L`: log lines of the app carry the same.
            let mut id = std::ptr::null();
            ap_run_generate_log_id(c, r, &mut id);
            (*r).log_id = id;
        }
        b.request_id(bytes((*r).log_id));

        for entry in table((*r).headers_in) {
            let (name, value) = (bytes(entry.key), bytes(entry.val));
            if name.eq_ignore_ascii_case(b"proxy") {
                // httpoxy: as HTTP_PROXY it would pass for the app's outgoing proxy setting;
                // Apache's core keeps it out of every CGI-like environment (mod_wsgi's too).
                continue;
            }
            if name.eq_ignore_ascii_case(b"cookie") && value.windows(2).any(|w| w == b", ") {
                b.header(name, &cookie_headers_rejoined(value));
            } else {
                b.header(name, value);
            }
        }
        if let Some(len) = dechunked_len {
            b.body_length(len);
        }
        // What SetEnv, SetEnvIf, RewriteRule [E=] and other modules set for this request: extra
        // environ entries (Apache's counterpart of nginx's wsgi_param, as mod_wsgi has it).
        // A subrequest (an SSI `include virtual`) starts with a copy of its parent's variables,
        // which mod_include has filled with the page's CGI ones: those of this request's own
        // keys are the parent's, not this request's, and stay out.
        let subrequest = !(*r).main.is_null();
        for entry in table((*r).subprocess_env) {
            let (name, value) = (bytes(entry.key), bytes(entry.val));
            if subrequest && own_key(name) {
                continue;
            }
            // As mod_wsgi reads it: what mod_ssl sets, or the configuration when TLS ended at a
            // balancer it trusts (`<If>` on the balancer's address and its header).
            if name.eq_ignore_ascii_case(b"HTTPS") {
                https = https_variable(value).unwrap_or(https);
            }
            b.param(name, value);
        }
        // After the variables, which they override (as CGI's and mod_wsgi's): set only once an
        // authentication module has checked the user, and a `SetEnvIf` copying a header of
        // the client's into REMOTE_USER must not replace it. What Trac's login, Django's
        // RemoteUserMiddleware and hgweb's push rely on.
        if !(*r).user.is_null() {
            b.param(b"REMOTE_USER", bytes((*r).user));
        }
        if !(*r).ap_auth_type.is_null() {
            b.param(b"AUTH_TYPE", bytes((*r).ap_auth_type));
        }
        b.https(https);
        b.finish()
    }
}

/// The environ keys this module fills from the request itself.
fn own_key(name: &[u8]) -> bool {
    const OWN: [&[u8]; 14] = [
        b"REQUEST_METHOD",
        b"SCRIPT_NAME",
        b"PATH_INFO",
        b"QUERY_STRING",
        b"REQUEST_URI",
        b"SERVER_NAME",
        b"SERVER_PORT",
        b"SERVER_PROTOCOL",
        b"REMOTE_ADDR",
        b"REMOTE_PORT",
        b"CONTENT_TYPE",
        b"CONTENT_LENGTH",
        b"REMOTE_USER",
        b"AUTH_TYPE",
    ];
    name.starts_with(b"HTTP_") || OWN.contains(&name)
}

/// Apache joins repeated request headers with ", " before any module sees them; several
/// `Cookie` headers are given back joined with "; ", as apps parse them. A ", " is taken for
/// such a join only where a cookie's `name=` follows it (a name as browsers send them, `cart[1]`
/// too: anything but separators and controls): a value with a comma in it (not RFC 6265's, but
/// sent: `last_search=shoes, red`, a date) stays whole.
fn cookie_headers_rejoined(value: &[u8]) -> Vec<u8> {
    let starts_a_cookie = |rest: &[u8]| {
        let name = rest
            .iter()
            .take_while(|&&c| c > b' ' && c != 0x7f && !b"=;,\"".contains(&c))
            .count();
        name > 0 && rest.get(name) == Some(&b'=')
    };
    let mut joined = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i..].starts_with(b", ") && starts_a_cookie(&value[i + 2..]) {
            joined.extend_from_slice(b"; ");
            i += 2;
        } else {
            joined.push(value[i]);
            i += 1;
        }
    }
    joined
}

/// What an `HTTPS` variable says: `on`/`1` (TLS), `off`/`0` (not), or nothing.
fn https_variable(value: &[u8]) -> Option<bool> {
    if value.eq_ignore_ascii_case(b"on") || value == b"1" {
        Some(true)
    } else if value.eq_ignore_ascii_case(b"off") || value == b"0" {
        Some(false)
    } else {
        None
    }
}

/// The entries of an APR table (none for NULL), keys never NULL.
///
/// # Safety
/// `t` is NULL or a live table that is not modified while the entries are used.
unsafe fn table<'a>(t: *const apr_table_t) -> impl Iterator<Item = &'a apr_table_entry_t> {
    // SAFETY: per the function contract; a table's array holds `nelts` entries.
    let entries: &[apr_table_entry_t] = unsafe {
        let arr = if t.is_null() {
            std::ptr::null()
        } else {
            apr_table_elts(t)
        };
        if arr.is_null() || (*arr).nelts <= 0 {
            &[]
        } else {
            std::slice::from_raw_parts(
                (*arr).elts as *const apr_table_entry_t,
                (*arr).nelts as usize,
            )
        }
    };
    entries.iter().filter(|e| !e.key.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_variable_says_on_off_or_nothing() {
        for (value, said) in [
            (&b"on"[..], Some(true)),
            (b"On", Some(true)),
            (b"1", Some(true)),
            (b"off", Some(false)),
            (b"0", Some(false)),
            (b"", None),
            (b"yes", None),
        ] {
            assert_eq!(https_variable(value), said, "{value:?}");
        }
    }

    #[test]
    fn joined_cookie_headers_are_rejoined_and_commas_in_values_kept() {
        for (value, rejoined) in [
            (&b"a=1, b=2"[..], &b"a=1; b=2"[..]),
            (b"a=1, b=2, c=3", b"a=1; b=2; c=3"),
            (
                b"sessionid=abc; last_search=shoes, red; tz=UTC",
                b"sessionid=abc; last_search=shoes, red; tz=UTC",
            ),
            (b"seen=Wed, 21 Oct 2026, x=1", b"seen=Wed, 21 Oct 2026; x=1"),
            (b"a=1, =2", b"a=1, =2"),
            (b"a=1, cart[1]=2", b"a=1; cart[1]=2"),
            (b"a=1,b=2", b"a=1,b=2"),
        ] {
            assert_eq!(cookie_headers_rejoined(value), rejoined, "{value:?}");
        }
    }
}
