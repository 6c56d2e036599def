//! `wsgi_umask`: the file mode mask of the workers' Python. nginx's daemon mode sets it to 0
//! (nginx gives its own files explicit modes), which would leave every file and directory an app
//! creates (uploads, caches, a CalDAV collection) writable by every user.

use std::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use super::{args, conf_error, MainConf};
use crate::ffi::{guard, ngx_bytes};

/// What the workers' umask becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Umask {
    /// Not configured: 022 where nginx's daemon mode left 0, else what nginx was started with.
    #[default]
    Unset,
    /// `wsgi_umask off`: left as nginx leaves it.
    Off,
    /// `wsgi_umask 027`.
    Mask(u32),
}

/// The mask a daemonized nginx's workers get when none is configured: the usual default.
const DAEMON_DEFAULT: u32 = 0o022;

impl Umask {
    /// The mask to set in a worker whose current one is `current`; None to leave it.
    fn target(self, current: u32) -> Option<u32> {
        match self {
            Umask::Mask(mask) => Some(mask),
            Umask::Off => None,
            Umask::Unset => (current == 0).then_some(DAEMON_DEFAULT),
        }
    }

    /// Sets the calling process's umask as configured (a worker, before its apps are imported;
    /// the worker's threads share it).
    pub(crate) fn apply(self) {
        let current = current();
        let mask = self.target(current).unwrap_or(current);
        // SAFETY: umask only replaces the process's mask.
        unsafe { libc::umask(mask as libc::mode_t) };
    }

    /// The mask the configuration check sets before it imports the apps: the workers'. They
    /// start with this process's mask, or with 0 when nginx is yet to daemonize (a first start,
    /// or `nginx -t` for one; the check runs before nginx daemonizes).
    pub(crate) fn for_check(self, daemonizes: bool) -> libc::mode_t {
        let start = if daemonizes { 0 } else { current() };
        self.target(start).unwrap_or(start) as libc::mode_t
    }
}

/// The process's mask, left as it was.
fn current() -> u32 {
    // SAFETY: umask only swaps the process's mask; it is read and put back at once (nginx's
    // configuration is read on one thread).
    let current = unsafe { libc::umask(0) };
    // SAFETY: as above.
    unsafe { libc::umask(current) };
    current as u32
}

fn parse(value: &[u8]) -> Result<Umask, String> {
    if value == b"off" {
        return Ok(Umask::Off);
    }
    std::str::from_utf8(value)
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 4 && t.bytes().all(|c| (b'0'..=b'7').contains(&c)))
        .and_then(|t| u32::from_str_radix(t, 8).ok())
        .filter(|&m| m <= 0o777)
        .map(Umask::Mask)
        .ok_or_else(|| {
            format!(
                "wsgi_umask \"{}\": an octal mask from 000 to 0777 (e.g. 022, 027), or off",
                String::from_utf8_lossy(value)
            )
        })
}

pub(crate) unsafe extern "C" fn set_umask(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_umask", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration; the arguments are live.
        let (mc, args) = unsafe { (&mut *(conf as *mut MainConf), args(cf)) };
        if mc.umask != Umask::Unset {
            return c"is duplicate".as_ptr().cast_mut();
        }
        match parse(ngx_bytes(&args[1])) {
            Ok(umask) => {
                mc.umask = umask;
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
    fn masks_and_what_they_do() {
        assert_eq!(parse(b"022"), Ok(Umask::Mask(0o022)));
        assert_eq!(parse(b"0027"), Ok(Umask::Mask(0o027)));
        assert_eq!(parse(b"0"), Ok(Umask::Mask(0)));
        assert_eq!(parse(b"off"), Ok(Umask::Off));
        for bad in [&b""[..], b"8", b"0o22", b"1777", b"02222", b"-1", b"u=rwx"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Umask::Unset.target(0),
            Some(0o022),
            "nginx's daemon mode left 0"
        );
        assert_eq!(
            Umask::Unset.target(0o027),
            None,
            "nginx was started with a mask"
        );
        assert_eq!(Umask::Mask(0o077).target(0o022), Some(0o077));
        assert_eq!(Umask::Off.target(0), None);
    }
}
