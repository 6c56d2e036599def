//! The interpreter: `wsgi_python_home`, `wsgi_python_path`, the apps every worker imports, and
//! the configuration-time check that imports them all in a child process before nginx accepts
//! the configuration.

use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_core_conf_t, ngx_inherited, ngx_msec_t, ngx_process, ngx_str_t,
    NGX_LOG_EMERG, NGX_PROCESS_MASTER, NGX_PROCESS_SIGNALLER,
};
use ngx::core::{CoreModuleMainConf, NgxCoreModule, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx_wsgi::check::{check_apps, CheckError, Credentials, WorkerSetup};
use ngx_wsgi::{AppSpec, PythonSettings};

use super::app::AppEntry;
use super::{args, conf_error, full_path, position, utf8_arg, MainConf};
use crate::ffi::{guard, ngx_bytes};

/// Interpreter-wide settings and the apps to import.
pub(crate) struct PythonConf {
    pub settings: PythonSettings,
    /// `file:line` of `wsgi_python_home`.
    pub home_at: String,
    pub apps: Vec<AppEntry>,
    /// `wsgi_check_timeout`: how long the configuration check may take (NGX_CONF_UNSET_MSEC
    /// until set).
    pub check_timeout: ngx_msec_t,
}

impl Default for PythonConf {
    fn default() -> Self {
        PythonConf {
            settings: PythonSettings::default(),
            home_at: String::new(),
            apps: Vec::new(),
            check_timeout: ngx_msec_t::MAX,
        }
    }
}

impl PythonConf {
    pub(crate) fn check_timeout(&self) -> Duration {
        if self.check_timeout == ngx_msec_t::MAX {
            ngx_wsgi::check::DEFAULT_TIMEOUT
        } else {
            Duration::from_millis(self.check_timeout as u64)
        }
    }

    pub(crate) fn specs(&self) -> Vec<AppSpec> {
        self.apps.iter().map(|a| a.spec.clone()).collect()
    }

    /// The text of a check error, naming the directive it comes from.
    fn describe(&self, error: CheckError) -> String {
        match error {
            CheckError::App(i, e) => format!("{} cannot be loaded: {e}", self.apps[i].describe()),
            CheckError::Interpreter(e) => match &self.settings.home {
                Some(home) => format!(
                    "wsgi_python_home \"{}\" (in {}): {e}",
                    home.display(),
                    self.home_at
                ),
                None => format!("wsgi: {e}"),
            },
            CheckError::Process(e) => format!("wsgi: checking the apps failed: {e}"),
        }
    }
}

pub(crate) unsafe extern "C" fn set_python_home(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_python_home", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration.
        let python = unsafe { &mut (*(conf as *mut MainConf)).python };
        if python.settings.home.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: one argument, live during the callback.
        let home = match unsafe { utf8_arg(cf, &args(cf)[1]) } {
            // SAFETY: `cf` is live during the callback.
            Ok(v) => unsafe { full_path(cf, &v) },
            Err(e) => return e,
        };
        // A Python of another version or a missing venv fails here, naming this line.
        if let Err(e) = ngx_wsgi::interpreter::check_home(&home) {
            return conf_error(cf, &format!("wsgi_python_home {e}"));
        }
        python.settings.home = Some(home);
        // SAFETY: the file being parsed is live during the callback.
        python.home_at = unsafe { position(cf) };
        NGX_CONF_OK
    })
}

pub(crate) unsafe extern "C" fn set_python_path(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_python_path", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration.
        let python = unsafe { &mut (*(conf as *mut MainConf)).python };
        // SAFETY: the arguments are live during the callback.
        for arg in unsafe { &args(cf)[1..] } {
            // SAFETY: in the directive's callback.
            let dir = match unsafe { utf8_arg(cf, arg) } {
                // SAFETY: `cf` is live during the callback.
                Ok(v) => unsafe { full_path(cf, &v) },
                Err(e) => return e,
            };
            if !dir.is_dir() {
                return conf_error(
                    cf,
                    &format!("wsgi_python_path \"{}\" is not a directory", dir.display()),
                );
            }
            python.settings.path.push(dir);
        }
        NGX_CONF_OK
    })
}

/// After the http block: imports every app in a child process, so that a broken app fails
/// `nginx -t`, start and reload instead of leaving workers that cannot serve. Each problem is
/// logged; false when there was one.
///
/// # Safety
/// `cf` is the live configuration of the http block that ends.
pub(crate) unsafe fn check_at_configuration(cf: *mut ngx_conf_t, mc: &MainConf) -> bool {
    // SAFETY: plain read of nginx's process role.
    if mc.python.apps.is_empty() || unsafe { ngx_process } == NGX_PROCESS_SIGNALLER as usize {
        return true;
    }
    // SAFETY: `cf` is live.
    let mut setup = match unsafe { worker_setup(cf) } {
        Ok(setup) => setup,
        Err(e) => {
            // SAFETY: `cf->log` is live during configuration.
            crate::ffi::log::write_log(NGX_LOG_EMERG as usize, unsafe { (*cf).log }, &e);
            return false;
        }
    };
    setup.timeout = mc.python.check_timeout();
    setup.asgi_loop = mc.asgi.event_loop();
    setup.shutdown_timeout = std::time::Duration::from_millis(mc.limits.shutdown_timeout() as u64);
    // SAFETY: `cf` is live.
    setup.umask = Some(mc.umask.for_check(unsafe { daemonizes(cf) }));
    // The check's processes and the workers (forked from this one) name it in their messages.
    ngx_wsgi::interpreter::name_shutdown_timeout("wsgi_shutdown_timeout");
    let checked = check_apps(&mc.python.settings, &mc.python.specs(), &setup);
    // The check took seconds, maybe: nginx's cached clock, which its log lines and the new
    // workers' start carry, would be that much behind.
    // SAFETY: the configuring process's own clock, on its one thread.
    unsafe { nginx_sys::ngx_time_update() };
    let Err(errors) = checked else {
        return true;
    };
    for error in errors {
        // SAFETY: `cf->log` is live during configuration.
        crate::ffi::log::write_log(
            NGX_LOG_EMERG as usize,
            unsafe { (*cf).log },
            &mc.python.describe(error),
        );
    }
    false
}

/// Whether nginx will daemonize after this configuration (which sets the workers' umask to 0):
/// at a first start or its `nginx -t`, not at a reload (the master has already) nor on a binary
/// upgrade (inherited sockets). `daemon` is on unless set off before this point (`-g`, or the
/// main context above the http block).
///
/// # Safety
/// `cf` is the live configuration.
unsafe fn daemonizes(cf: *mut ngx_conf_t) -> bool {
    // SAFETY: the core module's configuration is created before any block is parsed.
    let ccf = unsafe { NgxCoreModule::main_conf(&*cf) }.expect("core module configuration");
    // SAFETY: plain reads of nginx's process globals, set before the configuration is read.
    let (role, inherited) = unsafe { (ngx_process, ngx_inherited) };
    role != NGX_PROCESS_MASTER as usize && inherited == 0 && ccf.daemon != 0
}

/// How nginx will start its workers: their environment (`env` directives, as nginx builds it)
/// and, when nginx runs as root, their user and groups (`user`, else nginx's default).
unsafe fn worker_setup(cf: *mut ngx_conf_t) -> Result<WorkerSetup, String> {
    // SAFETY: the core module's configuration is created before any block is parsed.
    let ccf = unsafe { NgxCoreModule::main_conf(&*cf) }.expect("core module configuration");
    let mut environment: Vec<(String, String)> = Vec::new();
    if let Ok(tz) = std::env::var("TZ") {
        environment.push(("TZ".into(), tz));
    }
    // SAFETY: the `env` array holds ngx_str_t values (empty until an `env` directive).
    let vars: &[ngx_str_t] = unsafe {
        if ccf.env.elts.is_null() {
            &[]
        } else {
            ccf.env.as_slice()
        }
    };
    for var in vars {
        let name = String::from_utf8_lossy(ngx_bytes(var)).into_owned();
        // `env NAME=value` keeps the name's length and the whole NUL-terminated token.
        // SAFETY: configuration tokens are NUL-terminated, so `data[len]` is readable.
        let value = unsafe {
            if !var.data.is_null() && *var.data.add(var.len) == b'=' {
                Some(
                    std::ffi::CStr::from_ptr(var.data.add(var.len + 1).cast())
                        .to_string_lossy()
                        .into_owned(),
                )
            } else {
                None
            }
        };
        if let Some(v) = value.or_else(|| std::env::var(&name).ok()) {
            environment.push((name, v));
        }
    }
    // nginx's workers change to `working_directory` (NUL-terminated, as nginx chdir()s with it)
    // after taking their user and before any module's worker start, so before the imports.
    let working_directory = (ccf.working_directory.len > 0).then(|| {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(ngx_bytes(
            &ccf.working_directory,
        )))
    });
    Ok(WorkerSetup {
        credentials: worker_credentials(ccf)?,
        environment: Some(environment),
        timeout: Duration::ZERO,
        asgi_loop: Default::default(),
        shutdown_timeout: Duration::ZERO,
        working_directory,
        umask: None,
    })
}

/// The workers' user when nginx runs as root: `user` (set before the http block, as nginx.conf
/// has it), else nginx's default user and group, which must exist: the check never runs as root
/// for want of a user.
fn worker_credentials(ccf: &ngx_core_conf_t) -> Result<Option<Credentials>, String> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if ccf.user != libc::uid_t::MAX {
        // SAFETY: set together with `user` by the `user` directive: a NUL-terminated name.
        let user =
            (!ccf.username.is_null()).then(|| unsafe { CStr::from_ptr(ccf.username) }.to_owned());
        return Ok(Some(Credentials {
            uid: ccf.user,
            gid: ccf.group,
            user,
        }));
    }
    // SAFETY: getpwnam/getgrnam return NULL or pointers to static records; single-threaded.
    unsafe {
        let pw = libc::getpwnam(nginx_sys::NGX_USER.as_ptr());
        let gr = libc::getgrnam(nginx_sys::NGX_GROUP.as_ptr());
        if pw.is_null() || gr.is_null() {
            return Err(format!(
                "wsgi: nginx's default workers' user \"{}\" or group \"{}\" does not exist: set \
                 `user` before the http block (the apps are never imported as root by default)",
                nginx_sys::NGX_USER.to_string_lossy(),
                nginx_sys::NGX_GROUP.to_string_lossy()
            ));
        }
        Ok(Some(Credentials {
            uid: (*pw).pw_uid,
            gid: (*gr).gr_gid,
            user: Some(CString::from(CStr::from_ptr(nginx_sys::NGX_USER.as_ptr()))),
        }))
    }
}
