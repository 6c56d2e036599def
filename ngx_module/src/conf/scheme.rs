//! `wsgi_scheme VALUE`: the scheme the app is told (`wsgi.url_scheme`, ASGI's `scheme`) when
//! TLS ends before nginx, at a load balancer that says so in a header nginx's configuration
//! trusts (a `map` of `$http_x_forwarded_proto`, a `geo` of `$realip_remote_addr`). Without it,
//! or when VALUE is neither `http` nor `https`, the scheme is the connection's.

use std::ffi::{c_char, c_void};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_complex_value, ngx_http_complex_value_t,
    ngx_http_request_t, ngx_int_t, ngx_str_t, NGX_OK,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use super::{args, conf_error, LocConf};
use crate::ffi::{guard, ngx_bytes};

/// The configured value, compiled into the configuration's pool (null: the connection's).
#[derive(Clone, Copy)]
pub(crate) struct Scheme(*mut ngx_http_complex_value_t);

impl Default for Scheme {
    fn default() -> Self {
        Scheme(std::ptr::null_mut())
    }
}

impl Scheme {
    pub(crate) fn merge(&mut self, parent: &Scheme) {
        if self.0.is_null() {
            self.0 = parent.0;
        }
    }

    /// Whether the app is told `https` for `r`.
    ///
    /// # Safety
    /// `r` is a live request on the event loop, in a location of this configuration.
    pub(crate) unsafe fn https(&self, r: *mut ngx_http_request_t) -> bool {
        // SAFETY: per the function contract: a live request has a live connection.
        let tls = unsafe { !(*(*r).connection).ssl.is_null() };
        if self.0.is_null() {
            return tls;
        }
        let mut value = ngx_str_t::empty();
        // SAFETY: the compiled value belongs to the configuration, live for the request; the
        // result is allocated from the request's pool.
        if unsafe { ngx_http_complex_value(r, self.0, &mut value) } != NGX_OK as ngx_int_t {
            return tls;
        }
        told(ngx_bytes(&value)).unwrap_or(tls)
    }
}

/// What a value says: `https` (true), `http` (false), in any case; anything else says nothing.
fn told(value: &[u8]) -> Option<bool> {
    if value.eq_ignore_ascii_case(b"https") {
        Some(true)
    } else if value.eq_ignore_ascii_case(b"http") {
        Some(false)
    } else {
        None
    }
}

pub(crate) unsafe extern "C" fn set_scheme(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_scheme", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration; the arguments and the pool are
        // live during the callback.
        unsafe {
            let lc = &mut *(conf as *mut LocConf);
            if !lc.scheme.0.is_null() {
                return conf_error(cf, "\"wsgi_scheme\" directive is duplicate");
            }
            let value = args(cf)[1];
            let Some(cv) = super::params::compile(cf, value) else {
                return NGX_CONF_ERROR;
            };
            // A value without variables is known now: a typo must not pass `nginx -t` to be
            // ignored on every request.
            if (*cv).lengths.is_null() && told(ngx_bytes(&value)).is_none() {
                return conf_error(
                    cf,
                    &format!(
                        "invalid value \"{}\" in \"wsgi_scheme\" directive: http, https, or variables",
                        String::from_utf8_lossy(ngx_bytes(&value))
                    ),
                );
            }
            lc.scheme = Scheme(cv);
        }
        NGX_CONF_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_say_anything() {
        assert_eq!(told(b"https"), Some(true));
        assert_eq!(told(b"HTTPS"), Some(true));
        assert_eq!(told(b"http"), Some(false));
        for other in [&b""[..], b"on", b"wss", b"https ", b"https,http"] {
            assert_eq!(told(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_level_without_its_own_inherits() {
        let parent = Scheme(std::ptr::NonNull::dangling().as_ptr());
        let mut child = Scheme::default();
        child.merge(&parent);
        assert_eq!(child.0, parent.0);
        let own = Scheme(
            std::ptr::NonNull::<ngx_http_complex_value_t>::dangling()
                .as_ptr()
                .wrapping_add(1),
        );
        let mut kept = own;
        kept.merge(&parent);
        assert_eq!(kept.0, own.0);
    }
}
