//! The directives: `NgxWsgiApp`, `NgxWsgiRequestBuffering`, `NgxWsgiRequestTimeout` (server,
//! virtual host, `<Location>`, `<Directory>`), `NgxWsgiPythonHome`, `NgxWsgiPythonPath`,
//! `NgxWsgiMaxRequests`, `NgxWsgiMaxRSS` and `NgxWsgiShutdownTimeout` (main server only: one
//! interpreter per child).
//!
//! Apache reads its configuration in the parent, which never runs Python; what the children need
//! (the apps to import, the interpreter settings) is kept in a process-wide registry that the
//! children inherit when they are forked.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ngx_wsgi::accel::AccelHeaders;
use ngx_wsgi::{AppSpec, PythonSettings};

use crate::bindings::{
    ap_check_cmd_context, ap_get_module_config, ap_server_root, apr_palloc, apr_pool_t,
    apr_pstrmemdup, cmd_parms, request_rec, GLOBAL_ONLY,
};
use crate::ffi_guard::guard;

/// Per-directory configuration (allocated from Apache's configuration pool).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct DirConf {
    /// Index into the registry's apps; negative: no app here.
    app: c_int,
    /// `SCRIPT_NAME` of the app: the `<Location>` path it was configured in, without its
    /// trailing slash (empty elsewhere). Pool memory, not NUL-terminated.
    mount: *const u8,
    mount_len: usize,
    /// `NgxWsgiRequestBuffering`: 1 on, 0 off, negative: not set here.
    buffering: c_int,
    /// `NgxWsgiRequestTimeout` in microseconds: 0 none, negative: not set here.
    timeout_us: i64,
    /// The app was configured in a `<Directory>` or `<Files>` section, which Apache applies only
    /// once it has mapped the URL to a file (the app cannot claim its URLs before that).
    by_file: c_int,
    /// `NgxWsgiIgnoreHeaders`: the set's bits; negative: not set here.
    ignore: c_int,
}

impl DirConf {
    /// What an inner section (`new`) makes of an outer one's settings (`base`).
    fn merged(base: &DirConf, new: &DirConf) -> DirConf {
        // The app and its mount go together: the innermost section that names an app wins.
        let mut merged = if new.app >= 0 { *new } else { *base };
        merged.buffering = if new.buffering >= 0 {
            new.buffering
        } else {
            base.buffering
        };
        merged.timeout_us = if new.timeout_us >= 0 {
            new.timeout_us
        } else {
            base.timeout_us
        };
        merged.ignore = if new.ignore >= 0 {
            new.ignore
        } else {
            base.ignore
        };
        merged
    }

    pub(crate) fn app(&self) -> Option<usize> {
        usize::try_from(self.app).ok()
    }

    /// Whether the app was configured for files rather than URLs (see `by_file`).
    pub(crate) fn by_file(&self) -> bool {
        self.by_file != 0
    }

    /// Whether a chunked request body is read whole before the app starts (the default).
    pub(crate) fn request_buffering(&self) -> bool {
        self.buffering != 0
    }

    /// The app's `X-Accel-*` headers Apache neither acts on nor sends.
    pub(crate) fn ignored_accel(&self) -> AccelHeaders {
        u8::try_from(self.ignore).map_or(AccelHeaders::NONE, AccelHeaders::from_bits)
    }

    /// How long a request may stay inside Python before it is answered 504 (None: no limit).
    pub(crate) fn request_timeout(&self) -> Option<std::time::Duration> {
        u64::try_from(self.timeout_us)
            .ok()
            .filter(|&us| us > 0)
            .map(std::time::Duration::from_micros)
    }

    pub(crate) fn mount(&self) -> &[u8] {
        if self.mount.is_null() || self.mount_len == 0 {
            &[]
        } else {
            // SAFETY: `mount` points at `mount_len` bytes of configuration-pool memory, which
            // lives as long as the configuration.
            unsafe { std::slice::from_raw_parts(self.mount, self.mount_len) }
        }
    }
}

/// One configured app and where it was configured (for error messages).
#[derive(Debug, Clone)]
pub(crate) struct AppEntry {
    pub(crate) spec: AppSpec,
    pub(crate) text: String,
    pub(crate) place: String,
}

impl AppEntry {
    pub(crate) fn describe(&self) -> String {
        format!("NgxWsgiApp \"{}\" (in {})", self.text, self.place)
    }
}

/// What the configuration asks of the children's interpreter.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    pub(crate) apps: Vec<AppEntry>,
    pub(crate) python: PythonSettings,
    /// `file:line` of `NgxWsgiPythonHome`.
    pub(crate) python_home_at: String,
    /// `NgxWsgiMaxRequests N [jitter=M]` (0: no limit).
    pub(crate) max_requests: u64,
    pub(crate) max_requests_jitter: u64,
    /// `NgxWsgiMaxRSS` in bytes (0: no limit).
    pub(crate) max_rss: usize,
    /// `NgxWsgiShutdownTimeout` in microseconds (negative: not set).
    pub(crate) shutdown_timeout_us: i64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            apps: Vec::new(),
            python: PythonSettings::default(),
            python_home_at: String::new(),
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss: 0,
            shutdown_timeout_us: -1,
        }
    }
}

impl Registry {
    /// How long an exiting child waits for the app's own threads.
    pub(crate) fn shutdown_timeout(&self) -> std::time::Duration {
        u64::try_from(self.shutdown_timeout_us).map_or(
            ngx_wsgi::interpreter::DEFAULT_SHUTDOWN_TIMEOUT,
            std::time::Duration::from_micros,
        )
    }

    /// Whether a child may have to recycle (by request count or memory, or to load its apps
    /// again when it could not), so that its pipe of death is looked for.
    pub(crate) fn recycles(&self) -> bool {
        // A child that cannot load its apps recycles too (to try again), limits or not.
        !self.apps.is_empty()
    }
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    apps: Vec::new(),
    python: PythonSettings {
        home: None,
        path: Vec::new(),
    },
    python_home_at: String::new(),
    max_requests: 0,
    max_requests_jitter: 0,
    max_rss: 0,
    shutdown_timeout_us: -1,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets the previous reading of the configuration (Apache reads it twice at start, and again
/// on every restart).
pub(crate) fn reset() {
    *registry() = Registry::default();
}

/// A copy of what the configuration registered.
pub(crate) fn snapshot() -> Registry {
    registry().clone()
}

/// This request's directory configuration, when an app serves it.
///
/// # Safety
/// `r` is a live request.
pub(crate) unsafe fn for_request<'a>(r: *const request_rec) -> Option<&'a DirConf> {
    // SAFETY: the per-directory vector is live for the request; this module's slot holds a
    // `DirConf` created by `create_dir_config` or `merge_dir_config`.
    unsafe {
        let conf =
            ap_get_module_config((*r).per_dir_config, crate::handle::module()) as *const DirConf;
        conf.as_ref().filter(|c| c.app >= 0)
    }
}

/// # Safety
/// `pool` is a live pool.
unsafe fn alloc(pool: *mut apr_pool_t, conf: DirConf) -> *mut c_void {
    // SAFETY: apr_palloc returns memory suitably aligned for any type, of the requested size.
    unsafe {
        let p = apr_palloc(pool, std::mem::size_of::<DirConf>()) as *mut DirConf;
        p.write(conf);
        p.cast()
    }
}

pub(crate) unsafe extern "C" fn create_dir_config(
    pool: *mut apr_pool_t,
    _dir: *mut c_char,
) -> *mut c_void {
    let empty = DirConf {
        app: -1,
        mount: std::ptr::null(),
        mount_len: 0,
        buffering: -1,
        timeout_us: -1,
        by_file: 0,
        ignore: -1,
    };
    guard("create_dir_config", std::ptr::null_mut(), || {
        // SAFETY: Apache passes its configuration pool.
        unsafe { alloc(pool, empty) }
    })
}

pub(crate) unsafe extern "C" fn merge_dir_config(
    pool: *mut apr_pool_t,
    base: *mut c_void,
    new: *mut c_void,
) -> *mut c_void {
    guard("merge_dir_config", std::ptr::null_mut(), || {
        // SAFETY: both were made by this module's create/merge functions.
        unsafe {
            let (base, new) = (*(base as *const DirConf), *(new as *const DirConf));
            alloc(pool, DirConf::merged(&base, &new))
        }
    })
}

/// Copies `msg` into the configuration pool as Apache's error result of a directive.
unsafe fn error(cmd: *mut cmd_parms, msg: &str) -> *const c_char {
    let msg = msg.replace('\0', "");
    // SAFETY: the command's pool is live while the directive is processed; pstrmemdup adds the
    // terminating NUL.
    unsafe { apr_pstrmemdup((*cmd).pool, msg.as_ptr().cast(), msg.len()) }
}

/// # Safety
/// `s` is NULL or a NUL-terminated string.
unsafe fn text<'a>(s: *const c_char) -> &'a str {
    if s.is_null() {
        return "";
    }
    // SAFETY: per the function contract.
    unsafe { CStr::from_ptr(s) }.to_str().unwrap_or("")
}

/// Where the directive being processed was written, as `file:line`.
unsafe fn place(cmd: *const cmd_parms) -> String {
    // SAFETY: the directive of a running command is live.
    unsafe {
        let d = (*cmd).directive;
        if d.is_null() {
            return "the configuration".into();
        }
        format!("{}:{}", text((*d).filename), (*d).line_num)
    }
}

/// The `SCRIPT_NAME` an app configured by `cmd` is mounted at: the path of the enclosing
/// `<Location>` (not a regular expression one) without its trailing slash; empty elsewhere.
unsafe fn mount_of(cmd: *const cmd_parms) -> Vec<u8> {
    // SAFETY: the directive tree and the section's path live while the directive is processed.
    unsafe {
        let d = (*cmd).directive;
        if d.is_null() || (*d).parent.is_null() || (*cmd).path.is_null() {
            return Vec::new();
        }
        let section = text((*(*d).parent).directive);
        let args = text((*(*d).parent).args).trim_start();
        if !section.eq_ignore_ascii_case("<Location") || args.starts_with('~') {
            return Vec::new();
        }
        let path = CStr::from_ptr((*cmd).path).to_bytes();
        let end = path.iter().rposition(|&c| c != b'/').map_or(0, |i| i + 1);
        path[..end].to_vec()
    }
}

/// Whether the directive being processed sits in a section Apache matches against file names.
unsafe fn in_file_section(cmd: *const cmd_parms) -> bool {
    // SAFETY: the directive tree lives while the directive is processed.
    unsafe {
        let d = (*cmd).directive;
        if d.is_null() || (*d).parent.is_null() {
            return false;
        }
        let section = text((*(*d).parent).directive).to_ascii_lowercase();
        section.starts_with("<directory") || section.starts_with("<files")
    }
}

/// `NgxWsgiApp PATH.py[:CALLABLE] | module.name[:CALLABLE]`
pub(crate) unsafe extern "C" fn set_app(
    cmd: *mut cmd_parms,
    conf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard("NgxWsgiApp", c"NgxWsgiApp: internal error".as_ptr(), || {
        // SAFETY: Apache passes the running command, this module's directory configuration for
        // the section being read, and the directive's argument.
        unsafe {
            let value = text(arg);
            // SAFETY: `ap_server_root` is set before the configuration is read.
            let base = PathBuf::from(text(ap_server_root));
            let spec = match AppSpec::parse(value, &base) {
                Ok(spec) => spec,
                Err(e) => return error(cmd, &format!("NgxWsgiApp: {e}")),
            };
            let mut reg = registry();
            let index = match reg.apps.iter().position(|a| a.spec == spec) {
                Some(i) => i,
                None => {
                    reg.apps.push(AppEntry {
                        spec,
                        text: value.to_owned(),
                        place: place(cmd),
                    });
                    reg.apps.len() - 1
                }
            };
            let mount = mount_of(cmd);
            let conf = &mut *(conf as *mut DirConf);
            conf.app = index as c_int;
            conf.by_file = c_int::from(in_file_section(cmd));
            conf.mount_len = mount.len();
            conf.mount = if mount.is_empty() {
                std::ptr::null()
            } else {
                apr_pstrmemdup((*cmd).pool, mount.as_ptr().cast(), mount.len()) as *const u8
            };
            std::ptr::null()
        }
    })
}

/// `NgxWsgiRequestBuffering On|Off`
pub(crate) unsafe extern "C" fn set_request_buffering(
    _cmd: *mut cmd_parms,
    conf: *mut c_void,
    on: c_int,
) -> *const c_char {
    guard(
        "NgxWsgiRequestBuffering",
        c"NgxWsgiRequestBuffering: internal error".as_ptr(),
        || {
            // SAFETY: Apache passes this module's directory configuration of the section.
            unsafe { (*(conf as *mut DirConf)).buffering = c_int::from(on != 0) };
            std::ptr::null()
        },
    )
}

/// `NgxWsgiIgnoreHeaders X-Accel-Redirect` (each argument is one header; only the header this
/// module acts on on Apache can be named)
pub(crate) unsafe extern "C" fn add_ignore_header(
    cmd: *mut cmd_parms,
    conf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard(
        "NgxWsgiIgnoreHeaders",
        c"NgxWsgiIgnoreHeaders: internal error".as_ptr(),
        || {
            // SAFETY: Apache passes this module's directory configuration of the section and
            // one argument.
            unsafe {
                let conf = &mut *(conf as *mut DirConf);
                let name = text(arg);
                let Some(header) = AccelHeaders::named(name.as_bytes(), AccelHeaders::REDIRECT)
                else {
                    return error(
                        cmd,
                        &format!(
                            "NgxWsgiIgnoreHeaders: unknown header \"{name}\" (on Apache this module acts on X-Accel-Redirect only)"
                        ),
                    );
                };
                let set = conf.ignored_accel().with(header);
                conf.ignore = c_int::from(set.bits());
                std::ptr::null()
            }
        },
    )
}

/// `NgxWsgiPythonHome DIR`
pub(crate) unsafe extern "C" fn set_python_home(
    cmd: *mut cmd_parms,
    _conf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard(
        "NgxWsgiPythonHome",
        c"NgxWsgiPythonHome: internal error".as_ptr(),
        || {
            // SAFETY: as in `set_app`.
            unsafe {
                let refused = ap_check_cmd_context(cmd, GLOBAL_ONLY);
                if !refused.is_null() {
                    return refused;
                }
                let home = Path::new(text(arg));
                if let Err(e) = ngx_wsgi::interpreter::check_home(home) {
                    return error(cmd, &format!("NgxWsgiPythonHome: {e}"));
                }
                let mut reg = registry();
                reg.python.home = Some(home.to_owned());
                reg.python_home_at = place(cmd);
                std::ptr::null()
            }
        },
    )
}

/// `NgxWsgiPythonPath DIR...` (each argument is one directory)
pub(crate) unsafe extern "C" fn add_python_path(
    cmd: *mut cmd_parms,
    _conf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard(
        "NgxWsgiPythonPath",
        c"NgxWsgiPythonPath: internal error".as_ptr(),
        || {
            // SAFETY: as in `set_app`.
            unsafe {
                let refused = ap_check_cmd_context(cmd, GLOBAL_ONLY);
                if !refused.is_null() {
                    return refused;
                }
                let dir = PathBuf::from(text(arg));
                if !dir.is_dir() {
                    return error(
                        cmd,
                        &format!(
                            "NgxWsgiPythonPath: \"{}\" is not a directory",
                            dir.display()
                        ),
                    );
                }
                registry().python.path.push(dir);
                std::ptr::null()
            }
        },
    )
}

/// `NgxWsgiRequestTimeout TIME` (seconds, or with a unit: `500ms`, `30s`, `5mi`, `1h`; 0: none)
pub(crate) unsafe extern "C" fn set_request_timeout(
    cmd: *mut cmd_parms,
    conf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard(
        "NgxWsgiRequestTimeout",
        c"NgxWsgiRequestTimeout: internal error".as_ptr(),
        || {
            // SAFETY: Apache passes the running command, this module's directory configuration
            // of the section and the directive's argument.
            unsafe {
                let Some(timeout) = duration_us(text(arg)) else {
                    return error(
                        cmd,
                        &format!(
                            "NgxWsgiRequestTimeout: invalid time \"{}\" (seconds, or with a unit: 500ms, 30s, 5mi, 1h; 0 for none)",
                            text(arg)
                        ),
                    );
                };
                (*(conf as *mut DirConf)).timeout_us = timeout;
                std::ptr::null()
            }
        },
    )
}

/// `NgxWsgiShutdownTimeout TIME` (main server): how long an exiting child waits for the app's
/// own threads before it logs them and exits.
pub(crate) unsafe extern "C" fn set_shutdown_timeout(
    cmd: *mut cmd_parms,
    _conf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard(
        "NgxWsgiShutdownTimeout",
        c"NgxWsgiShutdownTimeout: internal error".as_ptr(),
        || {
            // SAFETY: as in `set_app`.
            unsafe {
                let refused = ap_check_cmd_context(cmd, GLOBAL_ONLY);
                if !refused.is_null() {
                    return refused;
                }
                match duration_us(text(arg)) {
                    Some(us) => {
                        registry().shutdown_timeout_us = us;
                        std::ptr::null()
                    }
                    None => error(
                        cmd,
                        &format!(
                            "NgxWsgiShutdownTimeout: invalid time \"{}\" (seconds, or with a unit: 500ms, 30s, 5mi, 1h)",
                            text(arg)
                        ),
                    ),
                }
            }
        },
    )
}

/// A time as Apache's own timeouts are written (`ProxyTimeout`, `connectiontimeout=`): a number
/// of seconds, or of `ms`, `s`, `mi` (minutes) or `h`; in microseconds.
fn duration_us(text: &str) -> Option<i64> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: i64 = text[..digits].parse().ok()?;
    let unit: i64 = match &text[digits..] {
        "" | "s" => 1_000_000,
        "ms" => 1_000,
        "mi" => 60_000_000,
        "h" => 3_600_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// `NgxWsgiMaxRequests N [jitter=M]`
pub(crate) unsafe extern "C" fn set_max_requests(
    cmd: *mut cmd_parms,
    _conf: *mut c_void,
    count: *const c_char,
    jitter: *const c_char,
) -> *const c_char {
    guard(
        "NgxWsgiMaxRequests",
        c"NgxWsgiMaxRequests: internal error".as_ptr(),
        || {
            // SAFETY: as in `set_app`; `jitter` is NULL when the directive has one argument.
            unsafe {
                let refused = ap_check_cmd_context(cmd, GLOBAL_ONLY);
                if !refused.is_null() {
                    return refused;
                }
                let max_requests = match text(count).parse::<u64>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return error(
                            cmd,
                            &format!(
                                "NgxWsgiMaxRequests: \"{}\": needs a number of requests above 0",
                                text(count)
                            ),
                        )
                    }
                };
                let jitter = if jitter.is_null() {
                    0
                } else {
                    match text(jitter)
                        .strip_prefix("jitter=")
                        .and_then(|j| j.parse::<u64>().ok())
                    {
                        Some(j) => j,
                        None => {
                            return error(
                                cmd,
                                &format!(
                                    "NgxWsgiMaxRequests: invalid parameter \"{}\" (expected jitter=NUMBER)",
                                    text(jitter)
                                ),
                            )
                        }
                    }
                };
                let mut reg = registry();
                reg.max_requests = max_requests;
                reg.max_requests_jitter = jitter;
                std::ptr::null()
            }
        },
    )
}

/// `NgxWsgiMaxRSS SIZE` (bytes, or with a unit: `512k`, `48m`, `2g`)
pub(crate) unsafe extern "C" fn set_max_rss(
    cmd: *mut cmd_parms,
    _conf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    guard(
        "NgxWsgiMaxRSS",
        c"NgxWsgiMaxRSS: internal error".as_ptr(),
        || {
            // SAFETY: as in `set_app`.
            unsafe {
                let refused = ap_check_cmd_context(cmd, GLOBAL_ONLY);
                if !refused.is_null() {
                    return refused;
                }
                match ngx_wsgi::recycle::parse_memory_size(text(arg)) {
                Some(bytes) if bytes > 0 => {
                    registry().max_rss = bytes;
                    std::ptr::null()
                }
                _ => error(
                    cmd,
                    &format!(
                        "NgxWsgiMaxRSS: invalid value \"{}\" (bytes, or with a unit: 512k, 48m, 2g)",
                        text(arg)
                    ),
                ),
            }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(app: c_int, mount: &'static [u8], buffering: c_int, timeout_us: i64) -> DirConf {
        DirConf {
            app,
            mount: mount.as_ptr(),
            mount_len: mount.len(),
            buffering,
            timeout_us,
            by_file: 0,
            ignore: -1,
        }
    }

    #[test]
    fn the_innermost_app_wins_with_its_mount_and_settings_inherit() {
        let outer = conf(0, b"/api", 0, 5_000_000);
        let inner = conf(-1, b"", -1, -1);
        let merged = DirConf::merged(&outer, &inner);
        assert_eq!((merged.app(), merged.mount()), (Some(0), &b"/api"[..]));
        assert!(!merged.request_buffering());
        assert_eq!(
            merged.request_timeout(),
            Some(std::time::Duration::from_secs(5))
        );
        let own = conf(1, b"/v2", 1, 0);
        let merged = DirConf::merged(&outer, &own);
        assert_eq!((merged.app(), merged.mount()), (Some(1), &b"/v2"[..]));
        assert!(merged.request_buffering());
        assert_eq!(
            merged.request_timeout(),
            None,
            "0 turns an outer deadline off"
        );
    }

    #[test]
    fn an_inner_section_without_ignore_headers_inherits_the_outer_ones() {
        let mut outer = conf(0, b"/api", -1, -1);
        outer.ignore = c_int::from(AccelHeaders::REDIRECT.bits());
        let inner = conf(-1, b"", -1, -1);
        assert_eq!(
            DirConf::merged(&outer, &inner).ignored_accel(),
            AccelHeaders::REDIRECT
        );
        assert_eq!(
            DirConf::merged(&inner, &inner).ignored_accel(),
            AccelHeaders::NONE
        );
    }

    #[test]
    fn times_as_apache_writes_them() {
        assert_eq!(duration_us("30"), Some(30_000_000));
        assert_eq!(duration_us("500ms"), Some(500_000));
        assert_eq!(duration_us("5mi"), Some(300_000_000));
        assert_eq!(duration_us("1h"), Some(3_600_000_000));
        assert_eq!(duration_us("soon"), None);
        assert_eq!(duration_us("5m"), None, "Apache's minutes are mi");
        assert_eq!(duration_us("99999999999999999h"), None);
    }

    #[test]
    fn shutdown_timeout_defaults_to_five_seconds() {
        let mut r = Registry::default();
        assert_eq!(r.shutdown_timeout(), std::time::Duration::from_secs(5));
        r.shutdown_timeout_us = 250_000;
        assert_eq!(r.shutdown_timeout(), std::time::Duration::from_millis(250));
    }
}
