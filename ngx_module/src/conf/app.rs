//! `wsgi_app` and `asgi_app`: which callable a location serves, and the mount point
//! (`SCRIPT_NAME`, ASGI's `root_path`) that comes with the location or, with `wsgi_mount`, is
//! given apart from it.

use std::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_http_core_loc_conf_t};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx_wsgi::{AppKind, AppSpec};

use super::{args, conf_error, full_path, main_conf, position, utf8_arg, LocConf};
use crate::ffi::{guard, ngx_bytes};

/// One distinct `wsgi_app` (or `asgi_app`) value and where it was first configured.
pub(crate) struct AppEntry {
    pub text: String,
    pub spec: AppSpec,
    /// `file:line` of the directive.
    pub at: String,
}

impl AppEntry {
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} \"{}\" (in {})",
            directive(self.spec.kind),
            self.text,
            self.at
        )
    }
}

/// The app of one location.
#[derive(Default, Clone)]
pub(crate) struct LocationApp {
    /// Index into the main configuration's apps.
    pub index: Option<usize>,
    /// `SCRIPT_NAME` for requests of this location (the mount point).
    pub script_name: Vec<u8>,
    /// The app speaks ASGI (`asgi_app`).
    pub asgi: bool,
    /// `wsgi_mount`: the mount point given apart from the location's name (NGINX Unit's
    /// `prefix`), so that a regex location can mount its app too.
    pub mount: Option<Vec<u8>>,
}

fn directive(kind: AppKind) -> &'static str {
    match kind {
        AppKind::Wsgi => "wsgi_app",
        AppKind::Asgi => "asgi_app",
    }
}

impl LocationApp {
    /// `if` and `limit_except` blocks (nameless locations) inside a `wsgi_app` location serve
    /// the same app; real locations never inherit one.
    pub(crate) fn merge(&mut self, parent: &LocationApp, nameless: bool) {
        if nameless && self.index.is_none() && parent.index.is_some() {
            *self = parent.clone();
        }
    }
}

pub(crate) unsafe extern "C" fn set_app(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx's arguments, passed on.
    unsafe { set_app_of(cf, conf, AppKind::Wsgi) }
}

pub(crate) unsafe extern "C" fn set_asgi_app(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx's arguments, passed on.
    unsafe { set_app_of(cf, conf, AppKind::Asgi) }
}

unsafe fn set_app_of(cf: *mut ngx_conf_t, conf: *mut c_void, kind: AppKind) -> *mut c_char {
    guard(directive(kind), NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration for the current block.
        let lc = unsafe { &mut *(conf as *mut LocConf) };
        if lc.app.index.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: wsgi_app takes exactly one argument; in its callback.
        let text = match unsafe { utf8_arg(cf, &args(cf)[1]) } {
            Ok(t) => t,
            Err(e) => return e,
        };
        // SAFETY: `cf` is live during the callback.
        let base = unsafe { full_path(cf, "") };
        let parsed = match kind {
            AppKind::Wsgi => AppSpec::parse(&text, &base),
            AppKind::Asgi => AppSpec::parse_asgi(&text, &base),
        };
        let spec = match parsed {
            Ok(s) => s,
            Err(e) => return conf_error(cf, &format!("{} {e}", directive(kind))),
        };
        // SAFETY: inside an http block; see `main_conf`.
        let mc = unsafe { main_conf(cf) };
        let index = match mc.python.apps.iter().position(|a| a.spec == spec) {
            Some(i) => i,
            None => {
                // SAFETY: the file being parsed is live during the callback.
                let at = unsafe { position(cf) };
                mc.python.apps.push(AppEntry { text, spec, at });
                mc.python.apps.len() - 1
            }
        };
        lc.app.index = Some(index);
        lc.app.asgi = kind == AppKind::Asgi;
        // SAFETY: `cf` is live; registering `$request_id` needs the configuration being parsed.
        if unsafe { mc.request_id.register(cf) }.is_err() {
            return NGX_CONF_ERROR;
        }
        // SAFETY: inside a location block its core configuration exists.
        let clcf = unsafe { super::core_loc_conf(cf) };
        lc.app.script_name = lc.app.mount.clone().unwrap_or_else(|| mount_point(clcf));
        NGX_CONF_OK
    })
}

pub(crate) unsafe extern "C" fn set_mount(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_mount", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration for the current block.
        let lc = unsafe { &mut *(conf as *mut LocConf) };
        if lc.app.mount.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: wsgi_mount takes exactly one argument.
        let value = ngx_bytes(unsafe { &args(cf)[1] });
        let mount = match parse_mount(value) {
            Ok(m) => m,
            Err(e) => return conf_error(cf, &format!("wsgi_mount {e}")),
        };
        if lc.app.index.is_some() {
            lc.app.script_name = mount.clone();
        }
        lc.app.mount = Some(mount);
        NGX_CONF_OK
    })
}

/// A `wsgi_mount` value: a path from `/`, kept without its trailing slash (`/` alone mounts at
/// the root), as `SCRIPT_NAME` never ends with one.
fn parse_mount(value: &[u8]) -> Result<Vec<u8>, String> {
    let shown = String::from_utf8_lossy(value);
    if !value.starts_with(b"/") {
        return Err(format!(
            "\"{shown}\": the mount point must start with \"/\""
        ));
    }
    if value
        .iter()
        .any(|&b| b < 0x20 || b == 0x7f || b == b'?' || b == b'#')
    {
        return Err(format!(
            "\"{shown}\": the mount point is a path: no control character, \"?\" or \"#\""
        ));
    }
    let mut mount = value.to_vec();
    while mount.ends_with(b"/") {
        mount.pop();
    }
    Ok(mount)
}

/// `SCRIPT_NAME` for a location: a prefix location's name without its trailing slash; nothing
/// for `location /`, exact, regex and named locations.
pub(crate) fn mount_point(clcf: &ngx_http_core_loc_conf_t) -> Vec<u8> {
    if !clcf.regex.is_null() || clcf.exact_match() != 0 || clcf.named() != 0 || clcf.noname() != 0 {
        return Vec::new();
    }
    let name = ngx_bytes(&clcf.name);
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    trimmed.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nginx_sys::ngx_str_t;

    fn location(name: &'static [u8]) -> ngx_http_core_loc_conf_t {
        // SAFETY: an all-zero core location configuration is a plain prefix location.
        let mut clcf: ngx_http_core_loc_conf_t = unsafe { std::mem::zeroed() };
        clcf.name = ngx_str_t {
            len: name.len(),
            data: name.as_ptr().cast_mut(),
        };
        clcf
    }

    #[test]
    fn prefix_locations_mount_at_their_name() {
        assert_eq!(mount_point(&location(b"/api/")), b"/api");
        assert_eq!(mount_point(&location(b"/api")), b"/api");
        assert_eq!(mount_point(&location(b"/")), b"");
        let mut exact = location(b"/exact");
        exact.set_exact_match(1);
        assert_eq!(mount_point(&exact), b"");
        let mut named = location(b"@app");
        named.set_named(1);
        assert_eq!(mount_point(&named), b"");
        let mut nameless = location(b"");
        nameless.set_noname(1);
        assert_eq!(mount_point(&nameless), b"");
    }

    #[test]
    fn mount_points_are_paths_without_their_trailing_slash() {
        assert_eq!(parse_mount(b"/cart").unwrap(), b"/cart");
        assert_eq!(parse_mount(b"/cart/").unwrap(), b"/cart");
        assert_eq!(parse_mount(b"/").unwrap(), b"");
        assert!(parse_mount(b"cart")
            .unwrap_err()
            .contains("must start with"));
        assert!(parse_mount(b"/a?b").is_err());
        assert!(parse_mount(b"/a\nb").is_err());
    }

    #[test]
    fn only_nameless_blocks_inherit_the_app() {
        let parent = LocationApp {
            index: Some(2),
            script_name: b"/api".to_vec(),
            asgi: true,
            mount: None,
        };
        let mut nested = LocationApp::default();
        nested.merge(&parent, false);
        assert_eq!(nested.index, None);
        let mut block = LocationApp::default();
        block.merge(&parent, true);
        assert_eq!(
            (block.index, block.script_name.as_slice(), block.asgi),
            (Some(2), &b"/api"[..], true)
        );
        let mut own = LocationApp {
            index: Some(0),
            script_name: Vec::new(),
            asgi: false,
            mount: None,
        };
        own.merge(&parent, true);
        assert_eq!((own.index, own.asgi), (Some(0), false));
    }
}
