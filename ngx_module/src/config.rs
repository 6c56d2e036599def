//! The `wsgi_*` directives: parsing, merging, and the configuration-time check that imports every
//! app before nginx accepts the configuration.

use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_core_conf_t, ngx_core_module, ngx_flag_t,
    ngx_http_compile_complex_value, ngx_http_compile_complex_value_t, ngx_http_complex_value_t,
    ngx_http_core_loc_conf_t, ngx_http_core_module, ngx_http_get_variable_index, ngx_int_t,
    ngx_msec_t, ngx_pcalloc, ngx_process, ngx_str_t, ngx_thread_pool_add, ngx_thread_pool_t,
    ngx_uint_t, NGX_ERROR, NGX_LOG_EMERG, NGX_OK, NGX_PROCESS_SIGNALLER,
};
use ngx::core::{Pool, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::HttpModuleConfExt;
use ngx_wsgi::accel::AccelHeaders;
use ngx_wsgi::check::{check_apps, CheckError, Credentials, WorkerSetup};
use ngx_wsgi::{AppSpec, PythonSettings};

use crate::ffi_guard::guard;
use crate::{module, ngx_bytes};

/// One distinct `wsgi_app` value and where it was first configured.
pub(crate) struct AppEntry {
    pub text: String,
    pub spec: AppSpec,
    /// `file:line` of the directive.
    pub at: String,
}

impl AppEntry {
    pub(crate) fn describe(&self) -> String {
        format!("wsgi_app \"{}\" (in {})", self.text, self.at)
    }
}

/// `file:line` of the directive being parsed.
unsafe fn position(cf: *mut ngx_conf_t) -> String {
    // SAFETY: during a directive callback the file being parsed is live.
    unsafe {
        let f = (*cf).conf_file;
        format!(
            "{}:{}",
            String::from_utf8_lossy(ngx_bytes(&(*f).file.name)),
            (*f).line
        )
    }
}

/// `http`-level settings: the interpreter and the apps it imports.
pub(crate) struct MainConf {
    pub python: PythonSettings,
    /// `file:line` of `wsgi_python_home`.
    pub python_home_at: String,
    pub apps: Vec<AppEntry>,
    /// `wsgi_max_requests N [jitter=M]` (0: no limit).
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// `wsgi_max_rss SIZE` (NGX_CONF_UNSET_SIZE until set).
    pub max_rss: usize,
    /// Index of nginx's `$request_id`, shown in the log lines of each request.
    pub request_id_var: Option<ngx_uint_t>,
    /// The `wsgi_status` shared memory zone, when some location has `wsgi_status`.
    pub status_zone: *mut nginx_sys::ngx_shm_zone_t,
}

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            python: PythonSettings::default(),
            python_home_at: String::new(),
            apps: Vec::new(),
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss: usize::MAX,
            request_id_var: None,
            status_zone: std::ptr::null_mut(),
        }
    }
}

/// Per-location settings.
pub(crate) struct LocConf {
    /// Index into `MainConf::apps`, where this location serves an app.
    pub app: Option<usize>,
    /// `SCRIPT_NAME` for requests of this location (the mount point).
    pub script_name: Vec<u8>,
    /// `wsgi_thread_pool`, inherited down to locations.
    pub thread_pool_name: ngx_str_t,
    /// The resolved pool, for locations that serve an app.
    pub thread_pool: *mut ngx_thread_pool_t,
    /// `wsgi_stream_buffer`: how many bytes of a streamed response may wait unsent before the
    /// app's iterator is paused.
    pub stream_buffer: usize,
    /// `wsgi_request_buffering`: read the whole body before the app runs (1), or give it to the
    /// app as it arrives (0).
    pub request_buffering: ngx_flag_t,
    /// `wsgi_param`s of this level (or, when it has none, inherited from the enclosing one).
    pub params: Vec<Param>,
    /// `wsgi_read_timeout` in ms (0: none; NGX_CONF_UNSET_MSEC until merged).
    pub read_timeout: ngx_msec_t,
    /// `wsgi_ignore_headers`: the app's `X-Accel-*` headers nginx neither acts on nor sends.
    pub ignore_headers: Option<AccelHeaders>,
}

/// One `wsgi_param NAME VALUE [if_not_empty]`.
#[derive(Clone)]
pub(crate) struct Param {
    pub name: Vec<u8>,
    /// The value with its nginx variables, compiled into the configuration's pool.
    pub value: *mut ngx_http_complex_value_t,
    pub if_not_empty: bool,
}

/// Default `wsgi_stream_buffer`.
pub(crate) const DEFAULT_STREAM_BUFFER: usize = 256 * 1024;

impl Default for LocConf {
    fn default() -> Self {
        LocConf {
            app: None,
            script_name: Vec::new(),
            thread_pool_name: ngx_str_t::empty(),
            thread_pool: std::ptr::null_mut(),
            // NGX_CONF_UNSET_SIZE, as ngx_conf_set_size_slot expects.
            stream_buffer: usize::MAX,
            // NGX_CONF_UNSET, as ngx_conf_set_flag_slot expects.
            request_buffering: -1,
            params: Vec::new(),
            read_timeout: ngx_msec_t::MAX,
            ignore_headers: None,
        }
    }
}

pub(crate) unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    guard("create_main_conf", std::ptr::null_mut(), || {
        // SAFETY: nginx passes a live configuration whose pool outlives the configuration; the
        // pool's cleanup drops the value.
        unsafe {
            Pool::from_ngx_pool((*cf).pool)
                .allocate(MainConf::default())
                .cast()
        }
    })
}

pub(crate) unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    guard("create_loc_conf", std::ptr::null_mut(), || {
        // SAFETY: as in `create_main_conf`.
        unsafe {
            Pool::from_ngx_pool((*cf).pool)
                .allocate(LocConf::default())
                .cast()
        }
    })
}

pub(crate) unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    guard("merge_loc_conf", NGX_CONF_ERROR, || {
        // SAFETY: nginx passes this module's two location configurations, created above.
        let (parent, child) =
            unsafe { (&*(parent as *const LocConf), &mut *(child as *mut LocConf)) };
        if child.thread_pool_name.data.is_null() {
            child.thread_pool_name = parent.thread_pool_name;
        }
        // Like fastcgi_param: a level with wsgi_params of its own inherits none.
        if child.params.is_empty() {
            child.params = parent.params.clone();
        }
        if child.read_timeout == ngx_msec_t::MAX {
            child.read_timeout = if parent.read_timeout == ngx_msec_t::MAX {
                0
            } else {
                parent.read_timeout
            };
        }
        if child.ignore_headers.is_none() {
            child.ignore_headers = parent.ignore_headers;
        }
        if child.request_buffering == -1 {
            child.request_buffering = if parent.request_buffering == -1 {
                1
            } else {
                parent.request_buffering
            };
        }
        if child.stream_buffer == usize::MAX {
            child.stream_buffer = if parent.stream_buffer == usize::MAX {
                DEFAULT_STREAM_BUFFER
            } else {
                parent.stream_buffer
            };
        }
        // SAFETY: during a merge, `cf->ctx` holds the configurations of the block being merged.
        let clcf = unsafe { core_loc_conf(cf) };
        // `if` and `limit_except` blocks inside a wsgi_app location serve the same app.
        if clcf.noname() != 0 && child.app.is_none() && parent.app.is_some() {
            child.app = parent.app;
            child.script_name = parent.script_name.clone();
        }
        if clcf.lmt_excpt() != 0 && clcf.handler.is_none() && child.app.is_some() {
            clcf.handler = Some(crate::handler::content_handler);
        }
        if child.app.is_some() {
            let name: *mut ngx_str_t = if child.thread_pool_name.data.is_null() {
                std::ptr::null_mut()
            } else {
                &mut child.thread_pool_name
            };
            // SAFETY: `cf` is live; a NULL name selects the pool named "default"; the name's
            // bytes live in the cycle's pool as long as the pool entry does.
            child.thread_pool = unsafe { ngx_thread_pool_add(cf, name) };
            if child.thread_pool.is_null() {
                return NGX_CONF_ERROR;
            }
        }
        NGX_CONF_OK
    })
}

/// The directive's arguments (the name first).
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> &'a [ngx_str_t] {
    // SAFETY: during a directive callback `cf->args` holds `nelts` ngx_str_t values.
    unsafe { (*(*cf).args).as_slice() }
}

fn conf_error(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
    NGX_CONF_ERROR
}

fn utf8_arg(cf: *mut ngx_conf_t, arg: &ngx_str_t) -> Result<String, *mut c_char> {
    String::from_utf8(ngx_bytes(arg).to_vec())
        .map_err(|_| conf_error(cf, "the value is not valid UTF-8"))
}

/// A configured path, relative ones taken from nginx's prefix (like nginx's own paths).
unsafe fn full_path(cf: *mut ngx_conf_t, value: &str) -> PathBuf {
    // SAFETY: the cycle and its prefix are live during configuration.
    let prefix = unsafe { String::from_utf8_lossy(ngx_bytes(&(*(*cf).cycle).prefix)).into_owned() };
    Path::new(&prefix).join(value)
}

pub(crate) unsafe fn main_conf<'a>(cf: *mut ngx_conf_t) -> &'a mut MainConf {
    // SAFETY: inside the http block this module's main configuration exists.
    unsafe {
        (*cf)
            .http_main_conf_unchecked::<MainConf>(module())
            .expect("wsgi main configuration")
            .as_mut()
    }
}

pub(crate) unsafe extern "C" fn set_app(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_app", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration for the current block.
        let lc = unsafe { &mut *(conf as *mut LocConf) };
        if lc.app.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: wsgi_app takes exactly one argument.
        let text = match utf8_arg(cf, unsafe { &args(cf)[1] }) {
            Ok(t) => t,
            Err(e) => return e,
        };
        // SAFETY: `cf` is live during the callback.
        let base = unsafe { full_path(cf, "") };
        let spec = match AppSpec::parse(&text, &base) {
            Ok(s) => s,
            Err(e) => return conf_error(cf, &format!("wsgi_app {e}")),
        };
        // SAFETY: inside an http block; see `main_conf`.
        let mc = unsafe { main_conf(cf) };
        let index = match mc.apps.iter().position(|a| a.spec == spec) {
            Some(i) => i,
            None => {
                // SAFETY: the file being parsed is live during the callback.
                let at = unsafe { position(cf) };
                mc.apps.push(AppEntry { text, spec, at });
                mc.apps.len() - 1
            }
        };
        lc.app = Some(index);
        if mc.request_id_var.is_none() {
            let mut name = ngx::ngx_string!("request_id");
            // SAFETY: `cf` is live; nginx copies the name it registers.
            let index = unsafe { ngx_http_get_variable_index(cf, &mut name) };
            if index == NGX_ERROR as ngx_int_t {
                return NGX_CONF_ERROR;
            }
            mc.request_id_var = Some(index as ngx_uint_t);
        }
        // SAFETY: inside a location block its core configuration exists.
        let clcf = unsafe { core_loc_conf(cf) };
        clcf.handler = Some(crate::handler::content_handler);
        lc.script_name = mount_point(clcf);
        NGX_CONF_OK
    })
}

/// The core module's configuration of the location block `cf` is in.
pub(crate) unsafe fn core_loc_conf<'a>(cf: *mut ngx_conf_t) -> &'a mut ngx_http_core_loc_conf_t {
    // SAFETY: the caller is inside (or merging) a location, whose core configuration exists.
    unsafe {
        (*cf)
            .http_location_conf_unchecked::<ngx_http_core_loc_conf_t>(&*std::ptr::addr_of!(
                ngx_http_core_module
            ))
            .expect("core location configuration")
            .as_mut()
    }
}

/// `SCRIPT_NAME` for a location: a prefix location's name without its trailing slash; nothing
/// for `location /`, exact, regex and named locations.
fn mount_point(clcf: &ngx_http_core_loc_conf_t) -> Vec<u8> {
    if !clcf.regex.is_null() || clcf.exact_match() != 0 || clcf.named() != 0 || clcf.noname() != 0 {
        return Vec::new();
    }
    let name = ngx_bytes(&clcf.name);
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    trimmed.to_vec()
}

pub(crate) unsafe extern "C" fn set_python_home(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_python_home", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration.
        let mc = unsafe { &mut *(conf as *mut MainConf) };
        if mc.python.home.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: one argument, live during the callback.
        let home = match utf8_arg(cf, unsafe { &args(cf)[1] }) {
            Ok(v) => unsafe { full_path(cf, &v) },
            Err(e) => return e,
        };
        // A Python of another version or a missing venv fails here, naming this line.
        if let Err(e) = ngx_wsgi::interpreter::check_home(&home) {
            return conf_error(cf, &format!("wsgi_python_home {e}"));
        }
        mc.python.home = Some(home);
        // SAFETY: the file being parsed is live during the callback.
        mc.python_home_at = unsafe { position(cf) };
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
        let mc = unsafe { &mut *(conf as *mut MainConf) };
        // SAFETY: the arguments are live during the callback.
        for arg in unsafe { &args(cf)[1..] } {
            let dir = match utf8_arg(cf, arg) {
                Ok(v) => unsafe { full_path(cf, &v) },
                Err(e) => return e,
            };
            if !dir.is_dir() {
                return conf_error(
                    cf,
                    &format!("wsgi_python_path \"{}\" is not a directory", dir.display()),
                );
            }
            mc.python.path.push(dir);
        }
        NGX_CONF_OK
    })
}

pub(crate) unsafe extern "C" fn set_thread_pool(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_thread_pool", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration.
        let lc = unsafe { &mut *(conf as *mut LocConf) };
        if !lc.thread_pool_name.data.is_null() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: one argument; its bytes live in the cycle's pool.
        lc.thread_pool_name = unsafe { args(cf)[1] };
        NGX_CONF_OK
    })
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
                        &format!("invalid parameter \"{}\"", String::from_utf8_lossy(other)),
                    )
                }
            };
            let cv = ngx_pcalloc((*cf).pool, std::mem::size_of::<ngx_http_complex_value_t>())
                as *mut ngx_http_complex_value_t;
            if cv.is_null() {
                return NGX_CONF_ERROR;
            }
            let mut value = args[2];
            let mut ccv: ngx_http_compile_complex_value_t = std::mem::zeroed();
            ccv.cf = cf;
            ccv.value = &mut value;
            ccv.complex_value = cv;
            if ngx_http_compile_complex_value(&mut ccv) != NGX_OK as ngx_int_t {
                return NGX_CONF_ERROR;
            }
            lc.params.push(Param {
                name: ngx_bytes(&args[1]).to_vec(),
                value: cv,
                if_not_empty,
            });
        }
        NGX_CONF_OK
    })
}

/// The `X-Accel-*` headers this module acts on, which `wsgi_ignore_headers` may name.
const HONOURED_ACCEL: AccelHeaders = AccelHeaders::REDIRECT
    .with(AccelHeaders::LIMIT_RATE)
    .with(AccelHeaders::CHARSET);

pub(crate) unsafe extern "C" fn set_ignore_headers(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_ignore_headers", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration; the arguments are live.
        let (lc, args) = unsafe { (&mut *(conf as *mut LocConf), args(cf)) };
        if lc.ignore_headers.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let mut set = AccelHeaders::NONE;
        for arg in &args[1..] {
            match AccelHeaders::named(ngx_bytes(arg), HONOURED_ACCEL) {
                Some(h) => set = set.with(h),
                None => {
                    return conf_error(
                        cf,
                        &format!(
                            "wsgi_ignore_headers: unknown header \"{}\" (this module acts on {})",
                            String::from_utf8_lossy(ngx_bytes(arg)),
                            HONOURED_ACCEL.names().join(", ")
                        ),
                    )
                }
            }
        }
        lc.ignore_headers = Some(set);
        NGX_CONF_OK
    })
}

pub(crate) unsafe extern "C" fn set_max_requests(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_max_requests", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration; the arguments are live.
        let (mc, args) = unsafe { (&mut *(conf as *mut MainConf), args(cf)) };
        if mc.max_requests != 0 {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let number = |text: &[u8]| std::str::from_utf8(text).ok()?.parse::<u64>().ok();
        match number(ngx_bytes(&args[1])) {
            Some(n) if n > 0 => mc.max_requests = n,
            _ => return conf_error(cf, "wsgi_max_requests needs a number of requests above 0"),
        }
        if let Some(jitter) = args.get(2) {
            match ngx_bytes(jitter).strip_prefix(b"jitter=").and_then(number) {
                Some(j) => mc.max_requests_jitter = j,
                None => {
                    return conf_error(
                        cf,
                        &format!(
                            "invalid parameter \"{}\" (expected jitter=NUMBER)",
                            String::from_utf8_lossy(ngx_bytes(jitter))
                        ),
                    )
                }
            }
        }
        NGX_CONF_OK
    })
}

/// After the http block: import every app in a child process, so that a broken app fails
/// `nginx -t`, start and reload instead of leaving workers that cannot serve.
pub(crate) unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    guard("postconfiguration", NGX_ERROR as ngx_int_t, || {
        crate::log::install();
        // SAFETY: inside the http block; see `main_conf`.
        let mc = unsafe { main_conf(cf) };
        // SAFETY: plain read of nginx's process role.
        if mc.apps.is_empty() || unsafe { ngx_process } == NGX_PROCESS_SIGNALLER as usize {
            return NGX_OK as ngx_int_t;
        }
        let specs: Vec<AppSpec> = mc.apps.iter().map(|a| a.spec.clone()).collect();
        // SAFETY: `cf` is live.
        let setup = unsafe { worker_setup(cf) };
        let Err(errors) = check_apps(&mc.python, &specs, &setup) else {
            return NGX_OK as ngx_int_t;
        };
        for error in errors {
            let msg = match error {
                CheckError::App(i, e) => format!("{} cannot be loaded: {e}", mc.apps[i].describe()),
                CheckError::Interpreter(e) => match &mc.python.home {
                    Some(home) => format!(
                        "wsgi_python_home \"{}\" (in {}): {e}",
                        home.display(),
                        mc.python_home_at
                    ),
                    None => format!("wsgi: {e}"),
                },
                CheckError::Process(e) => format!("wsgi: checking the apps failed: {e}"),
            };
            // SAFETY: `cf->log` is live during configuration.
            crate::log::write_log(NGX_LOG_EMERG as usize, unsafe { (*cf).log }, &msg);
        }
        NGX_ERROR as ngx_int_t
    })
}

/// How nginx will start its workers: their environment (`env` directives, as nginx builds it)
/// and, when nginx runs as root, their user (`user`, else nginx's default).
unsafe fn worker_setup(cf: *mut ngx_conf_t) -> WorkerSetup {
    // SAFETY: the core module's configuration is created before any block is parsed.
    let ccf = unsafe {
        let ctx = (*(*cf).cycle).conf_ctx;
        &*(*ctx.add((*std::ptr::addr_of!(ngx_core_module)).index)).cast::<ngx_core_conf_t>()
    };
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
    WorkerSetup {
        // SAFETY: see `worker_credentials`.
        credentials: unsafe { worker_credentials(ccf) },
        environment: Some(environment),
    }
}

unsafe fn worker_credentials(ccf: &ngx_core_conf_t) -> Option<Credentials> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    if ccf.user != libc::uid_t::MAX {
        return Some(Credentials {
            uid: ccf.user,
            gid: ccf.group,
        });
    }
    // SAFETY: getpwnam/getgrnam return NULL or pointers to static records; single-threaded.
    unsafe {
        let pw = libc::getpwnam(nginx_sys::NGX_USER.as_ptr());
        let gr = libc::getgrnam(nginx_sys::NGX_GROUP.as_ptr());
        if pw.is_null() || gr.is_null() {
            return None;
        }
        Some(Credentials {
            uid: (*pw).pw_uid,
            gid: (*gr).gr_gid,
        })
    }
}
