//! Limits and timeouts: `wsgi_read_timeout` (per location), `wsgi_max_requests` and
//! `wsgi_max_rss` (per worker, for recycling).

use std::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_msec_t};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use super::{args, conf_error, MainConf};
use crate::ffi::{guard, ngx_bytes};

/// NGX_CONF_UNSET_MSEC, as `ngx_conf_set_msec_slot` expects.
const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
/// NGX_CONF_UNSET_SIZE, as `ngx_conf_set_size_slot` expects.
const UNSET_SIZE: usize = usize::MAX;

/// Per-location limits.
#[derive(Clone)]
pub(crate) struct LocationLimits {
    /// `wsgi_read_timeout` in ms (0: none).
    pub read_timeout: ngx_msec_t,
}

impl Default for LocationLimits {
    fn default() -> Self {
        LocationLimits {
            read_timeout: UNSET_MSEC,
        }
    }
}

impl LocationLimits {
    pub(crate) fn merge(&mut self, parent: &LocationLimits) {
        if self.read_timeout == UNSET_MSEC {
            self.read_timeout = if parent.read_timeout == UNSET_MSEC {
                0
            } else {
                parent.read_timeout
            };
        }
    }
}

/// Per-worker limits (`http` level): recycling.
pub(crate) struct WorkerLimits {
    /// `wsgi_max_requests N [jitter=M]` (0: no limit).
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// `wsgi_max_rss SIZE` (unset until the directive).
    pub max_rss: usize,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss: UNSET_SIZE,
        }
    }
}

impl WorkerLimits {
    /// `wsgi_max_rss` in bytes, 0 for none.
    pub(crate) fn max_rss_bytes(&self) -> usize {
        if self.max_rss == UNSET_SIZE {
            0
        } else {
            self.max_rss
        }
    }
}

/// `wsgi_max_requests N [jitter=M]`, as (N, M).
fn parse_max_requests(count: &[u8], jitter: Option<&[u8]>) -> Result<(u64, u64), String> {
    let number = |text: &[u8]| std::str::from_utf8(text).ok()?.parse::<u64>().ok();
    let n = match number(count) {
        Some(n) if n > 0 => n,
        _ => return Err("wsgi_max_requests needs a number of requests above 0".into()),
    };
    let j = match jitter {
        None => 0,
        Some(text) => text
            .strip_prefix(b"jitter=")
            .and_then(number)
            .ok_or_else(|| {
                format!(
                    "invalid parameter \"{}\" (expected jitter=NUMBER)",
                    String::from_utf8_lossy(text)
                )
            })?,
    };
    Ok((n, j))
}

pub(crate) unsafe extern "C" fn set_max_requests(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_max_requests", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration; the arguments are live.
        let (mc, args) = unsafe { (&mut *(conf as *mut MainConf), args(cf)) };
        if mc.limits.max_requests != 0 {
            return c"is duplicate".as_ptr().cast_mut();
        }
        match parse_max_requests(ngx_bytes(&args[1]), args.get(2).map(ngx_bytes)) {
            Ok((n, j)) => {
                mc.limits.max_requests = n;
                mc.limits.max_requests_jitter = j;
                NGX_CONF_OK
            }
            Err(e) => conf_error(cf, &e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_requests_with_and_without_jitter() {
        assert_eq!(parse_max_requests(b"1000", None), Ok((1000, 0)));
        assert_eq!(parse_max_requests(b"10", Some(b"jitter=5")), Ok((10, 5)));
        assert!(parse_max_requests(b"0", None)
            .unwrap_err()
            .contains("above 0"));
        assert!(parse_max_requests(b"-1", None).is_err());
        assert!(parse_max_requests(b"10", Some(b"spread=5"))
            .unwrap_err()
            .contains("expected jitter=NUMBER"));
    }

    #[test]
    fn read_timeout_inherits_and_defaults_to_none() {
        let mut unset = LocationLimits::default();
        unset.merge(&LocationLimits::default());
        assert_eq!(unset.read_timeout, 0);
        let parent = LocationLimits { read_timeout: 5000 };
        let mut child = LocationLimits::default();
        child.merge(&parent);
        assert_eq!(child.read_timeout, 5000);
        let mut own = LocationLimits { read_timeout: 10 };
        own.merge(&parent);
        assert_eq!(own.read_timeout, 10);
    }

    #[test]
    fn max_rss_unset_is_no_limit() {
        assert_eq!(WorkerLimits::default().max_rss_bytes(), 0);
        let limits = WorkerLimits {
            max_rss: 1 << 20,
            ..Default::default()
        };
        assert_eq!(limits.max_rss_bytes(), 1 << 20);
    }
}
