//! The `wsgi_*` directives: one file per concept, each with its values, parsing and merging.
//! This file puts them together into the module's main and location configurations, the
//! directive table, and typed access for the layers above.

pub(crate) mod accel;
pub(crate) mod app;
pub(crate) mod asgi;
pub(crate) mod intercept;
pub(crate) mod limits;
pub(crate) mod params;
pub(crate) mod python;
pub(crate) mod scheme;
pub(crate) mod status;
pub(crate) mod streaming;
pub(crate) mod umask;

use std::ffi::c_char;
use std::mem::offset_of;
use std::path::{Path, PathBuf};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_core_loc_conf_t, ngx_http_get_variable_index,
    ngx_http_request_t, ngx_int_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_FLAG,
    NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE12, NGX_CONF_TAKE23, NGX_ERROR,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET,
    NGX_HTTP_SRV_CONF, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::core::NGX_CONF_ERROR;
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError, NgxHttpCoreModule,
};

use crate::ffi::{ngx_bytes, WsgiModule};

/// `http`-level settings: the interpreter and the apps it imports, worker limits, metrics.
#[derive(Default)]
pub(crate) struct MainConf {
    pub python: python::PythonConf,
    pub limits: limits::WorkerLimits,
    /// nginx's `$request_id`, shown in the log lines of each request.
    pub request_id: RequestIdVar,
    pub status_zone: status::StatusZone,
    pub asgi: asgi::AsgiConf,
    /// `wsgi_umask`.
    pub umask: umask::Umask,
}

/// Per-location settings.
#[derive(Default)]
pub(crate) struct LocConf {
    pub app: app::LocationApp,
    pub streaming: streaming::Streaming,
    pub params: params::Params,
    /// `wsgi_scheme`.
    pub scheme: scheme::Scheme,
    pub limits: limits::LocationLimits,
    /// `wsgi_ignore_headers`.
    pub ignore_headers: accel::IgnoreHeaders,
    /// `wsgi_intercept_errors`.
    pub intercept_errors: intercept::InterceptErrors,
    /// `wsgi_status`: this location answers the metrics.
    pub status: bool,
    pub websocket: asgi::WebSocketConf,
    pub asgi_http: asgi::AsgiHttpConf,
}

// SAFETY: the configurations nginx creates for this module through `create_main_conf` and
// `create_loc_conf` (the trait defaults, see lib.rs) are exactly these types.
unsafe impl HttpModuleMainConf for WsgiModule {
    type MainConf = MainConf;
}

// SAFETY: as above.
unsafe impl HttpModuleLocationConf for WsgiModule {
    type LocationConf = LocConf;
}

impl Merge for LocConf {
    /// What a location inherits from the level around it; the parts that need nginx (the
    /// thread pool, the nameless-block rule) are in [`finish_location`].
    fn merge(&mut self, parent: &LocConf) -> Result<(), MergeConfigError> {
        self.streaming.merge(&parent.streaming);
        self.params.merge(&parent.params);
        self.scheme.merge(&parent.scheme);
        self.limits.merge(&parent.limits);
        self.ignore_headers.merge(&parent.ignore_headers);
        self.intercept_errors.merge(&parent.intercept_errors);
        self.websocket.merge(&parent.websocket);
        self.asgi_http.merge(&parent.asgi_http);
        Ok(())
    }
}

/// The rest of a location's merge: `if`/`limit_except` blocks serve their location's app, and a
/// location that serves an app gets its thread pool.
///
/// # Safety
/// `cf` is the live configuration being merged; `child` is this module's configuration of the
/// block `cf` merges.
pub(crate) unsafe fn finish_location(
    cf: *mut ngx_conf_t,
    parent: &LocConf,
    child: &mut LocConf,
) -> Result<(), ()> {
    // SAFETY: during a merge, `cf->ctx` holds the configurations of the block being merged.
    let clcf = unsafe { core_loc_conf(cf) };
    child.app.merge(&parent.app, clcf.noname() != 0);
    if let (Some(mount), None) = (&child.app.mount, child.app.index) {
        ngx::ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "wsgi_mount \"{}\" is in a location that serves no app: put wsgi_app or asgi_app beside it",
            String::from_utf8_lossy(mount)
        );
        return Err(());
    }
    let own_params =
        child.params.0.first().map(|p| p.value) != parent.params.0.first().map(|p| p.value);
    if child.app.asgi && own_params {
        for param in child.params.0.iter().filter(|p| p.asgi_header.is_none()) {
            ngx::ngx_conf_log_error!(
                NGX_LOG_WARN,
                cf,
                "wsgi_param \"{}\" has no effect in an asgi_app location: an ASGI app has no \
                 environ, and only HTTP_* params, which set a request header, reach it",
                String::from_utf8_lossy(&param.name)
            );
        }
    }
    // Without `wsgi_thread_pool`, the module's own threads run the app.
    if child.app.index.is_some() && !child.streaming.thread_pool_name.data.is_null() {
        // SAFETY: per the function contract.
        unsafe { child.streaming.resolve_pool(cf) }?;
    }
    Ok(())
}

/// The index of nginx's `$request_id` variable, registered with the first `wsgi_app`.
#[derive(Default)]
pub(crate) struct RequestIdVar(pub Option<ngx_uint_t>);

impl RequestIdVar {
    /// # Safety
    /// `cf` is live (a directive callback).
    unsafe fn register(&mut self, cf: *mut ngx_conf_t) -> Result<(), ()> {
        if self.0.is_some() {
            return Ok(());
        }
        let mut name = ngx::ngx_string!("request_id");
        // SAFETY: `cf` is live; nginx copies the name it registers.
        let index = unsafe { ngx_http_get_variable_index(cf, &mut name) };
        if index == NGX_ERROR as ngx_int_t {
            return Err(());
        }
        self.0 = Some(index as ngx_uint_t);
        Ok(())
    }
}

/// This module's configuration of the location that serves `r`.
pub(crate) fn loc_conf(r: &ngx_http_request_t) -> Option<&'static LocConf> {
    WsgiModule::location_conf(r)
}

/// This module's main configuration, as `r` sees it.
pub(crate) fn main_conf_of(r: &ngx_http_request_t) -> Option<&'static MainConf> {
    WsgiModule::main_conf(r)
}

/// This module's main configuration of a running cycle (none without an http block).
pub(crate) fn cycle_main_conf(cycle: &ngx_cycle_t) -> Option<&'static MainConf> {
    WsgiModule::main_conf(cycle)
}

/// This module's main configuration while the http block is parsed.
///
/// # Safety
/// `cf` is live and inside an http block.
pub(crate) unsafe fn main_conf(cf: *mut ngx_conf_t) -> &'static mut MainConf {
    // SAFETY: per the function contract.
    WsgiModule::main_conf_mut(unsafe { &*cf }).expect("wsgi main configuration")
}

/// The core module's configuration of the location block `cf` is in.
///
/// # Safety
/// `cf` is live and inside (or merging) a location, whose core configuration exists.
pub(crate) unsafe fn core_loc_conf(cf: *mut ngx_conf_t) -> &'static mut ngx_http_core_loc_conf_t {
    // SAFETY: per the function contract.
    NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }).expect("core location configuration")
}

/// The directive's arguments (the name first).
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> &'a [ngx_str_t] {
    // SAFETY: during a directive callback `cf->args` holds `nelts` ngx_str_t values.
    unsafe { (*(*cf).args).as_slice() }
}

/// nginx's `ngx_conf_merge_value`: a value left `unset` takes the level around it, else
/// `default`.
fn merge_value<T: Copy + PartialEq>(own: &mut T, parent: T, unset: T, default: T) {
    if *own == unset {
        *own = if parent == unset { default } else { parent };
    }
}

fn conf_error(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
    NGX_CONF_ERROR
}

/// A directive's argument as text; the error names the directive.
///
/// # Safety
/// During a directive callback.
unsafe fn utf8_arg(cf: *mut ngx_conf_t, arg: &ngx_str_t) -> Result<String, *mut c_char> {
    String::from_utf8(ngx_bytes(arg).to_vec()).map_err(|_| {
        // SAFETY: per the function contract; the directive's name is its first argument.
        let directive = unsafe { String::from_utf8_lossy(ngx_bytes(&args(cf)[0])).into_owned() };
        conf_error(
            cf,
            &format!(
                "{directive}: \"{}\" is not valid UTF-8",
                String::from_utf8_lossy(ngx_bytes(arg))
            ),
        )
    })
}

/// A configured path, relative ones taken from nginx's prefix (like nginx's own paths).
unsafe fn full_path(cf: *mut ngx_conf_t, value: &str) -> PathBuf {
    // SAFETY: the cycle and its prefix are live during configuration.
    let prefix = unsafe { String::from_utf8_lossy(ngx_bytes(&(*(*cf).cycle).prefix)).into_owned() };
    Path::new(&prefix).join(value)
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

const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

/// A directive of `kind` whose setter writes at `offset` into the `conf`-selected configuration.
const fn directive(
    name: ngx_str_t,
    kind: u32,
    set: unsafe extern "C" fn(
        *mut ngx_conf_t,
        *mut ngx_command_t,
        *mut std::ffi::c_void,
    ) -> *mut c_char,
    conf: usize,
    offset: usize,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: kind as _,
        set: Some(set),
        conf,
        offset,
        post: std::ptr::null_mut(),
    }
}

/// Every `wsgi_*` directive. nginx reads the table for the whole program and never writes it.
pub(crate) static mut COMMANDS: [ngx_command_t; 33] = [
    directive(
        ngx::ngx_string!("wsgi_app"),
        NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        app::set_app,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("asgi_app"),
        NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        app::set_asgi_app,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_mount"),
        NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        app::set_mount,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("asgi_event_loop"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        asgi::set_event_loop,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_python_home"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        python::set_python_home,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_python_path"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
        python::set_python_path,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_thread_pool"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        streaming::set_thread_pool,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_stream_buffer"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        streaming::set_stream_buffer,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(LocConf, streaming.stream_buffer),
    ),
    directive(
        ngx::ngx_string!("wsgi_request_buffering"),
        ANY_LEVEL | NGX_CONF_FLAG,
        nginx_sys::ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(LocConf, streaming.request_buffering),
    ),
    directive(
        ngx::ngx_string!("wsgi_param"),
        ANY_LEVEL | NGX_CONF_TAKE23,
        params::set_param,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_scheme"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        scheme::set_scheme,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_max_requests"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
        limits::set_max_requests,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_max_rss"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        limits::set_max_rss,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_read_timeout"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        nginx_sys::ngx_conf_set_msec_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(LocConf, limits.read_timeout),
    ),
    directive(
        ngx::ngx_string!("asgi_websocket_ping_interval"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        nginx_sys::ngx_conf_set_msec_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(LocConf, websocket.ping_interval),
    ),
    directive(
        ngx::ngx_string!("asgi_websocket_idle_timeout"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        nginx_sys::ngx_conf_set_msec_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(LocConf, websocket.idle_timeout),
    ),
    directive(
        ngx::ngx_string!("asgi_websocket_compression"),
        ANY_LEVEL | NGX_CONF_FLAG,
        nginx_sys::ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(LocConf, websocket.compression),
    ),
    directive(
        ngx::ngx_string!("asgi_websocket_exit_code"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        asgi::set_websocket_exit_code,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_intercept_errors"),
        ANY_LEVEL | NGX_CONF_FLAG,
        nginx_sys::ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(LocConf, intercept_errors.0),
    ),
    directive(
        ngx::ngx_string!("asgi_pathsend"),
        ANY_LEVEL | NGX_CONF_FLAG,
        nginx_sys::ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        offset_of!(LocConf, asgi_http.pathsend),
    ),
    directive(
        ngx::ngx_string!("wsgi_max_threads"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        limits::set_count,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, limits.max_threads),
    ),
    directive(
        ngx::ngx_string!("wsgi_max_queue"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        limits::set_count,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, limits.max_queue),
    ),
    directive(
        ngx::ngx_string!("wsgi_queue_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        limits::set_msec_above_zero,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, limits.queue_timeout),
    ),
    directive(
        ngx::ngx_string!("wsgi_shutdown_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        nginx_sys::ngx_conf_set_msec_slot,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, limits.shutdown_timeout),
    ),
    directive(
        ngx::ngx_string!("wsgi_event_stream_grace"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        nginx_sys::ngx_conf_set_msec_slot,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, limits.event_stream_grace),
    ),
    directive(
        ngx::ngx_string!("wsgi_reload_handover"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_FLAG,
        nginx_sys::ngx_conf_set_flag_slot,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, limits.reload_handover),
    ),
    directive(
        ngx::ngx_string!("wsgi_busy_handoff"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_FLAG,
        nginx_sys::ngx_conf_set_flag_slot,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, limits.busy_handoff),
    ),
    directive(
        ngx::ngx_string!("wsgi_sticky_clients"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_FLAG,
        nginx_sys::ngx_conf_set_flag_slot,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, limits.sticky_clients),
    ),
    directive(
        ngx::ngx_string!("wsgi_umask"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        umask::set_umask,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_check_timeout"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        limits::set_msec_above_zero,
        NGX_HTTP_MAIN_CONF_OFFSET,
        offset_of!(MainConf, python.check_timeout),
    ),
    directive(
        ngx::ngx_string!("wsgi_ignore_headers"),
        ANY_LEVEL | NGX_CONF_1MORE,
        accel::set_ignore_headers,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    directive(
        ngx::ngx_string!("wsgi_status"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        status::set_status,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    ngx_command_t::empty(),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_inherits_from_the_levels_around_it() {
        let mut server = LocConf::default();
        server.limits.read_timeout = 2000;
        server.streaming.stream_buffer = 8192;
        let mut http = LocConf::default();
        http.merge(&LocConf::default()).unwrap();
        server.merge(&http).unwrap();
        let mut location = LocConf::default();
        location.streaming.request_buffering = 0;
        location.merge(&server).unwrap();
        assert_eq!(location.limits.read_timeout, 2000);
        assert_eq!(location.streaming.stream_buffer, 8192);
        assert_eq!(location.streaming.request_buffering, 0);
        assert!(!location.status);
    }
}
