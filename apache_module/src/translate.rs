//! An app's URLs are not files. A request that an app will serve is claimed when Apache
//! translates its URI, so that Apache does not look for it in the file system (a `stat` per path
//! component and an `.htaccess` look-up per directory, and `<Directory>` rules such as Debian's
//! `<Directory /> Require all denied` for a `DocumentRoot` that has nothing to do with the app),
//! the way mod_proxy treats the URLs it serves. `<Location>` rules still apply.

use std::ffi::c_int;

use crate::bindings::{
    ap_expr_str_exec, ap_get_core_module_config, apr_pstrmemdup, core_dir_config, request_rec,
    DECLINED, OK,
};
use crate::ffi_guard::guard;
use crate::request_info::bytes;

/// How a claimed request's `filename` starts (as mod_proxy's `proxy:`).
const CLAIMED: &[u8] = b"ngx-wsgi:";

pub(crate) unsafe extern "C" fn translate_name(r: *mut request_rec) -> c_int {
    guard("translate_name", DECLINED, || {
        // SAFETY: Apache passes a live request; its per-directory configuration is the result
        // of the location walk that precedes translation.
        unsafe {
            let app = crate::config::for_request(r).is_some();
            if !app && !crate::metrics::configured() {
                return DECLINED;
            }
            let handler = forced_handler(r);
            // The metrics' URLs are not files either.
            let ours = if handler == crate::metrics::HANDLER {
                crate::metrics::configured()
            } else {
                app && claims(&handler)
            };
            if !ours {
                return DECLINED;
            }
            let uri = bytes((*r).uri);
            let mut name = Vec::with_capacity(CLAIMED.len() + uri.len());
            name.extend_from_slice(CLAIMED);
            name.extend_from_slice(uri);
            (*r).filename = apr_pstrmemdup((*r).pool, name.as_ptr().cast(), name.len());
            OK as c_int
        }
    })
}

/// Whether the request was claimed for an app at translation (another module, such as mod_alias,
/// may have mapped it to a file first).
///
/// # Safety
/// `r` is a live request.
pub(crate) unsafe fn claimed(r: *const request_rec) -> bool {
    // SAFETY: per the function contract.
    unsafe { bytes((*r).filename) }.starts_with(CLAIMED)
}

pub(crate) unsafe extern "C" fn map_to_storage(r: *mut request_rec) -> c_int {
    guard("map_to_storage", DECLINED, || {
        // SAFETY: Apache passes a live request.
        if unsafe { claimed(r) } {
            OK as c_int
        } else {
            DECLINED
        }
    })
}

/// The handler a `SetHandler` of the request's `<Location>` names (empty when none). Core applies
/// it only later (fixups), but it decides now whether the app serves the request.
///
/// # Safety
/// `r` is a live request.
unsafe fn forced_handler(r: *mut request_rec) -> Vec<u8> {
    // SAFETY: core's per-directory configuration is always present; a SetHandler expression is
    // evaluated against the request as core itself does.
    unsafe {
        let core = ap_get_core_module_config((*r).per_dir_config) as *const core_dir_config;
        let Some(core) = core.as_ref() else {
            return Vec::new();
        };
        if core.expr_handler.is_null() {
            return bytes(core.handler).to_vec();
        }
        let mut err = std::ptr::null();
        let handler = ap_expr_str_exec(r, core.expr_handler, &mut err);
        if err.is_null() {
            bytes(handler).to_vec()
        } else {
            Vec::new()
        }
    }
}

/// The name `SetHandler` may give this module explicitly.
const HANDLER_NAME: &[u8] = b"ngx-wsgi";

/// Whether the app takes a request whose handler Apache set to `handler`: unless a `SetHandler`
/// (or `AddHandler`) named another handler, such as `default-handler` for static files or
/// `server-status` under an app's mount. A handler Apache derived from the content type (it holds
/// a `/`) names no handler.
pub(crate) fn claims(handler: &[u8]) -> bool {
    handler.is_empty() || handler == HANDLER_NAME || handler.contains(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_takes_what_no_other_handler_was_named_for() {
        assert!(claims(b""));
        assert!(claims(b"ngx-wsgi"));
        assert!(
            claims(b"text/html"),
            "a handler derived from a content type names none"
        );
        assert!(!claims(b"default-handler"));
        assert!(!claims(b"server-status"));
    }
}
