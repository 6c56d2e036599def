//! `wsgi_param NAME VALUE [if_not_empty]`: extra environ entries whose values may hold nginx
//! variables (like `fastcgi_param`).

use std::ffi::{c_char, c_void};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value, ngx_http_compile_complex_value_t,
    ngx_http_complex_value_t, ngx_int_t, ngx_pcalloc, ngx_str_t, NGX_OK,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use super::{args, conf_error, LocConf};
use crate::ffi::{guard, ngx_bytes};

/// One `wsgi_param`.
#[derive(Clone)]
pub(crate) struct Param {
    pub name: Vec<u8>,
    /// The value with its nginx variables, compiled into the configuration's pool.
    pub value: *mut ngx_http_complex_value_t,
    pub if_not_empty: bool,
    /// The request header it sets for an ASGI app, which has no environ: `HTTP_X_REMOTE_USER`
    /// is `x-remote-user`; None for a name that is not an `HTTP_` one. Made once, with the
    /// configuration, not for each request.
    pub asgi_header: Option<Vec<u8>>,
}

impl Param {
    pub(crate) fn new(
        name: &[u8],
        value: *mut ngx_http_complex_value_t,
        if_not_empty: bool,
    ) -> Param {
        let asgi_header = name
            .strip_prefix(b"HTTP_")
            .filter(|r| !r.is_empty())
            .map(|rest| {
                rest.iter()
                    .map(|&c| {
                        if c == b'_' {
                            b'-'
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect()
            });
        Param {
            name: name.to_vec(),
            value,
            if_not_empty,
            asgi_header,
        }
    }
}

/// The `wsgi_param`s of one level.
#[derive(Default, Clone)]
pub(crate) struct Params(pub Vec<Param>);

impl Params {
    /// Like `fastcgi_param`: a level with `wsgi_param`s of its own inherits none.
    pub(crate) fn merge(&mut self, parent: &Params) {
        if self.0.is_empty() {
            self.0 = parent.0.clone();
        }
    }
}

pub(crate) unsafe extern "C" fn set_param(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_param", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration; the arguments and the pool are
        // live during the callback; the compiled value lives in the configuration's pool.
        unsafe {
            let lc = &mut *(conf as *mut LocConf);
            let args = args(cf);
            let if_not_empty = match args.get(3).map(ngx_bytes) {
                None => false,
                Some(b"if_not_empty") => true,
                Some(other) => {
                    return conf_error(
                        cf,
                        &format!(
                            "wsgi_param: invalid parameter \"{}\" (expected if_not_empty)",
                            String::from_utf8_lossy(other)
                        ),
                    )
                }
            };
            let Some(cv) = compile(cf, args[2]) else {
                return NGX_CONF_ERROR;
            };
            lc.params
                .0
                .push(Param::new(ngx_bytes(&args[1]), cv, if_not_empty));
        }
        NGX_CONF_OK
    })
}

/// `value` with its nginx variables compiled into the configuration's pool (None: nginx has
/// logged why not).
///
/// # Safety
/// `cf` is the live configuration, during a directive callback.
pub(super) unsafe fn compile(
    cf: *mut ngx_conf_t,
    mut value: ngx_str_t,
) -> Option<*mut ngx_http_complex_value_t> {
    // SAFETY: per the function contract; the compiled value lives in the configuration's pool.
    unsafe {
        let cv = ngx_pcalloc((*cf).pool, std::mem::size_of::<ngx_http_complex_value_t>())
            as *mut ngx_http_complex_value_t;
        if cv.is_null() {
            return None;
        }
        let mut ccv: ngx_http_compile_complex_value_t = std::mem::zeroed();
        ccv.cf = cf;
        ccv.value = &mut value;
        ccv.complex_value = cv;
        (ngx_http_compile_complex_value(&mut ccv) == NGX_OK as ngx_int_t).then_some(cv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(names: &[&str]) -> Params {
        Params(
            names
                .iter()
                .map(|n| Param::new(n.as_bytes(), std::ptr::null_mut(), false))
                .collect(),
        )
    }

    fn names(p: &Params) -> Vec<&[u8]> {
        p.0.iter().map(|p| p.name.as_slice()).collect()
    }

    #[test]
    fn a_level_with_its_own_params_inherits_none() {
        let parent = params(&["A", "B"]);
        let mut empty = Params::default();
        empty.merge(&parent);
        assert_eq!(names(&empty), vec![&b"A"[..], b"B"]);
        let mut own = params(&["C"]);
        own.merge(&parent);
        assert_eq!(names(&own), vec![&b"C"[..]]);
    }

    #[test]
    fn an_http_param_is_an_asgi_apps_request_header() {
        let p = params(&[
            "HTTP_X_REMOTE_USER",
            "HTTP_AUTHORIZATION",
            "REMOTE_USER",
            "HTTP_",
        ]);
        let headers: Vec<Option<Vec<u8>>> = p.0.iter().map(|p| p.asgi_header.clone()).collect();
        assert_eq!(
            headers,
            [
                Some(b"x-remote-user".to_vec()),
                Some(b"authorization".to_vec()),
                None,
                None
            ]
        );
    }
}
