//! `mod_ngx_wsgi`: Apache httpd 2.4 serves WSGI applications from a CPython interpreter embedded
//! in each child process. This crate is the Apache glue; everything Python lives in `ngx_wsgi`.
//!
//! Request path: the MPM's worker thread that Apache hands the request to runs the app itself
//! (the GIL is held only while Python runs), reads the body through the input filters as the app
//! asks for it, and sends the response down the output filter chain.

// Unit tests build the module without its Apache descriptor (see below), which leaves the
// hooks it reaches unused there.
#![cfg_attr(test, allow(dead_code))]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod bindings;
mod brigade;
mod check;
mod client_io;
mod config;
mod deadline;
mod ffi_guard;
mod fork_child;
mod graceful;
mod handle;
mod handler;
mod keepalive_drain;
mod lifecycle;
mod log;
mod metrics;
mod mpm;
mod recycle;
mod request_body;
mod request_info;
mod response;
mod sibling_children;
mod side;
mod stuck_child;
mod timeout;
mod translate;

use std::ffi::c_int;
use std::ptr;

use bindings::{
    ap_hook_check_config, ap_hook_child_init, ap_hook_handler, ap_hook_map_to_storage,
    ap_hook_open_logs, ap_hook_post_config, ap_hook_post_read_request, ap_hook_pre_config,
    ap_hook_pre_connection, ap_hook_translate_name, apr_pool_t, cmd_func, cmd_how, cmd_how_FLAG,
    cmd_how_ITERATE, cmd_how_TAKE1, cmd_how_TAKE12, command_rec, module, ACCESS_CONF,
    APR_HOOK_FIRST, APR_HOOK_MIDDLE, APR_HOOK_REALLY_FIRST, RSRC_CONF,
};

type Take1 = unsafe extern "C" fn(
    *mut bindings::cmd_parms,
    *mut std::ffi::c_void,
    *const std::ffi::c_char,
) -> *const std::ffi::c_char;

const fn directive(
    name: &'static std::ffi::CStr,
    set: Take1,
    how: cmd_how,
    contexts: u32,
    help: &'static std::ffi::CStr,
) -> command_rec {
    command_rec {
        name: name.as_ptr(),
        func: cmd_func { take1: Some(set) },
        cmd_data: ptr::null_mut(),
        req_override: contexts as c_int,
        args_how: how,
        errmsg: help.as_ptr(),
    }
}

static mut COMMANDS: [command_rec; 10] = [
    directive(
        c"NgxWsgiApp",
        config::set_app,
        cmd_how_TAKE1,
        RSRC_CONF | ACCESS_CONF,
        c"PATH.py[:CALLABLE] (or another file's path: site.wsgi) or module.name[:CALLABLE]: the WSGI application served here",
    ),
    command_rec {
        name: c"NgxWsgiRequestBuffering".as_ptr(),
        func: cmd_func {
            flag: Some(config::set_request_buffering),
        },
        cmd_data: ptr::null_mut(),
        req_override: (RSRC_CONF | ACCESS_CONF) as c_int,
        args_how: cmd_how_FLAG,
        errmsg: c"Off: a chunked request body reaches the app as it arrives, without CONTENT_LENGTH (default On: read whole first)".as_ptr(),
    },
    directive(
        c"NgxWsgiIgnoreHeaders",
        config::add_ignore_header,
        cmd_how_ITERATE,
        RSRC_CONF | ACCESS_CONF,
        c"X-Accel-Redirect: the app's header of that name is neither acted on nor sent",
    ),
    directive(
        c"NgxWsgiRequestTimeout",
        config::set_request_timeout,
        cmd_how_TAKE1,
        RSRC_CONF | ACCESS_CONF,
        c"TIME (seconds, or 500ms, 30s, 5mi, 1h; 0: none): a request still inside Python after TIME is answered 504",
    ),
    command_rec {
        name: c"NgxWsgiMaxRequests".as_ptr(),
        func: cmd_func {
            take2: Some(config::set_max_requests),
        },
        cmd_data: ptr::null_mut(),
        req_override: RSRC_CONF as c_int,
        args_how: cmd_how_TAKE12,
        errmsg: c"N [jitter=M]: a child that has served N (+ a random 0..M) requests is replaced".as_ptr(),
    },
    directive(
        c"NgxWsgiMaxRSS",
        config::set_max_rss,
        cmd_how_TAKE1,
        RSRC_CONF,
        c"SIZE (512k, 48m, 2g): a child whose resident memory exceeds SIZE is replaced",
    ),
    directive(
        c"NgxWsgiShutdownTimeout",
        config::set_shutdown_timeout,
        cmd_how_TAKE1,
        RSRC_CONF,
        c"TIME (default 5s): how long an exiting child waits for the app's own threads",
    ),
    directive(
        c"NgxWsgiPythonHome",
        config::set_python_home,
        cmd_how_TAKE1,
        RSRC_CONF,
        c"a virtualenv or Python prefix for the children's interpreter",
    ),
    directive(
        c"NgxWsgiPythonPath",
        config::add_python_path,
        cmd_how_ITERATE,
        RSRC_CONF,
        c"directories added to sys.path like site directories",
    ),
    // SAFETY: an all-zero command_rec (NULL name) ends Apache's command table.
    unsafe { std::mem::zeroed() },
];

/// A NULL-terminated list of module names, for hook ordering.
struct ModuleNames<const N: usize>([*const std::ffi::c_char; N]);

// SAFETY: the pointers are to static string literals, never written.
unsafe impl<const N: usize> Sync for ModuleNames<N> {}

static AFTER_ALIAS: ModuleNames<2> = ModuleNames([c"mod_alias.c".as_ptr(), ptr::null()]);
/// The MPMs whose pipe of death `graceful` finds (their `open_logs` runs just before core's).
static MPMS: ModuleNames<3> = ModuleNames([c"event.c".as_ptr(), c"worker.c".as_ptr(), ptr::null()]);
static CORE: ModuleNames<2> = ModuleNames([c"core.c".as_ptr(), ptr::null()]);

unsafe extern "C" fn register_hooks(_pool: *mut apr_pool_t) {
    ffi_guard::guard("register_hooks", (), || {
        handle::set(ptr::addr_of!(ngx_wsgi_module));
        // SAFETY: Apache calls this once per load of the module, while it registers hooks.
        unsafe {
            ap_hook_pre_config(
                Some(lifecycle::pre_config),
                ptr::null(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
            ap_hook_check_config(
                Some(check::check_config),
                ptr::null(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
            // Right around the MPM's own (which creates its pipes of death), before core's (which
            // may open a piped error log).
            ap_hook_open_logs(
                Some(graceful::before_mpm_open_logs),
                ptr::null(),
                MPMS.0.as_ptr(),
                APR_HOOK_REALLY_FIRST as c_int,
            );
            ap_hook_open_logs(
                Some(graceful::after_mpm_open_logs),
                MPMS.0.as_ptr(),
                CORE.0.as_ptr(),
                APR_HOOK_REALLY_FIRST as c_int,
            );
            ap_hook_post_config(
                Some(metrics::post_config),
                ptr::null(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
            ap_hook_post_config(
                Some(sibling_children::post_config),
                ptr::null(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
            ap_hook_child_init(
                Some(lifecycle::child_init),
                ptr::null(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
            // The recycling drain counts the connections it waits for, and closes every one.
            ap_hook_pre_connection(
                Some(keepalive_drain::pre_connection),
                ptr::null(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
            ap_hook_post_read_request(
                Some(recycle::post_read_request),
                ptr::null(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
            // After mod_alias: an Alias under an app's mount serves its files.
            ap_hook_translate_name(
                Some(translate::translate_name),
                AFTER_ALIAS.0.as_ptr(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
            ap_hook_map_to_storage(
                Some(translate::map_to_storage),
                ptr::null(),
                ptr::null(),
                APR_HOOK_FIRST as c_int,
            );
            ap_hook_handler(
                Some(handler::handler),
                ptr::null(),
                ptr::null(),
                APR_HOOK_MIDDLE as c_int,
            );
        }
    })
}

/// The module Apache loads: `LoadModule ngx_wsgi_module .../libmod_ngx_wsgi.so`. A unit-test
/// executable has no Apache to hand it to (nor the Apache symbols its hooks reach): it gets an
/// empty descriptor instead, so the linker drops the rest.
#[cfg(not(test))]
#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_wsgi_module: module = module {
    version: bindings::MODULE_MAGIC_NUMBER_MAJOR as c_int,
    minor_version: bindings::MODULE_MAGIC_NUMBER_MINOR as c_int,
    module_index: -1,
    name: c"mod_ngx_wsgi.c".as_ptr(),
    dynamic_load_handle: ptr::null_mut(),
    next: ptr::null_mut(),
    magic: bindings::MODULE_MAGIC_COOKIE as std::ffi::c_ulong,
    rewrite_args: None,
    create_dir_config: Some(config::create_dir_config),
    merge_dir_config: Some(config::merge_dir_config),
    create_server_config: None,
    merge_server_config: None,
    // Apache only reads the command table, which lives for the whole program.
    cmds: ptr::addr_of!(COMMANDS) as *const command_rec,
    register_hooks: Some(register_hooks),
    flags: 0,
};

#[cfg(test)]
#[allow(non_upper_case_globals)]
static mut ngx_wsgi_module: module = {
    // SAFETY: an all-zero module descriptor is plain data (NULL pointers, no hooks).
    unsafe { std::mem::zeroed() }
};
