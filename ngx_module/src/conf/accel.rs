//! `wsgi_ignore_headers NAME ...`: the app's `X-Accel-*` headers that nginx neither acts on nor
//! sends (like `uwsgi_ignore_headers`).

use std::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx_wsgi::accel::AccelHeaders;

use super::{args, conf_error, LocConf};
use crate::ffi::{guard, ngx_bytes};

/// The `X-Accel-*` headers this module acts on, which `wsgi_ignore_headers` may name.
const HONOURED: AccelHeaders = AccelHeaders::REDIRECT
    .with(AccelHeaders::LIMIT_RATE)
    .with(AccelHeaders::CHARSET);

/// One level's `wsgi_ignore_headers` (None: not set there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IgnoreHeaders(pub Option<AccelHeaders>);

impl IgnoreHeaders {
    /// A level without its own list inherits the enclosing one's.
    pub(crate) fn merge(&mut self, parent: &IgnoreHeaders) {
        if self.0.is_none() {
            self.0 = parent.0;
        }
    }

    pub(crate) fn headers(&self) -> AccelHeaders {
        self.0.unwrap_or_default()
    }
}

pub(crate) unsafe extern "C" fn set_ignore_headers(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_ignore_headers", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration; the arguments are live.
        let (lc, args) = unsafe { (&mut *(conf as *mut LocConf), args(cf)) };
        if lc.ignore_headers.0.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let mut set = AccelHeaders::NONE;
        for arg in &args[1..] {
            match AccelHeaders::named(ngx_bytes(arg), HONOURED) {
                Some(h) => set = set.with(h),
                None => {
                    return conf_error(
                        cf,
                        &format!(
                            "wsgi_ignore_headers: unknown header \"{}\" (this module acts on {})",
                            String::from_utf8_lossy(ngx_bytes(arg)),
                            HONOURED.names().join(", ")
                        ),
                    )
                }
            }
        }
        lc.ignore_headers = IgnoreHeaders(Some(set));
        NGX_CONF_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_without_its_own_list_inherits_one() {
        let server = IgnoreHeaders(Some(AccelHeaders::REDIRECT));
        let mut location = IgnoreHeaders::default();
        location.merge(&server);
        assert_eq!(location.headers(), AccelHeaders::REDIRECT);
        let mut own = IgnoreHeaders(Some(AccelHeaders::CHARSET));
        own.merge(&server);
        assert_eq!(own.headers(), AccelHeaders::CHARSET);
        assert_eq!(IgnoreHeaders::default().headers(), AccelHeaders::NONE);
    }
}
