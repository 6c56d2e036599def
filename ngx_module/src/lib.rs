//! `ngx_http_wsgi_module`: nginx serves WSGI applications from a CPython interpreter embedded in
//! each worker process. This crate is the nginx glue; everything Python lives in `ngx_wsgi`.
//!
//! This file is the module as nginx sees it: its table, its configuration hooks and its process
//! hooks, wired to the layers below (see ARCHITECTURE.md). Read `handler.rs` next: it is the
//! life of one request.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
// Unit tests build the module without its nginx table (see below), which leaves the hooks it
// reaches unused there.
#![cfg_attr(test, allow(dead_code))]

mod access_log;
mod app_turn;
mod asgi_handler;
mod asgi_queue;
mod asgi_request;
mod asgi_scope;
mod asgi_ws;
mod bitfield_layout;
mod busy_handoff;
mod client_watch;
mod close_delimited;
mod conf;
mod descriptor_watch;
mod dispatch;
mod drain;
mod elastic_pool;
mod event_streams;
mod exec_child;
mod exit_drain;
mod fast_stop;
mod ffi;
mod fork_child;
mod generation;
#[cfg(ngx_feature = "http_v2")]
mod h2_reset;
mod handler;
mod header_fields;
mod header_filter;
mod heap_trim;
mod inflight;
mod intercept_errors;
mod job;
mod lifecycle;
mod main_blocked;
mod metrics;
mod nginx_pool;
mod notify;
mod old_workers;
mod overload;
mod recycle;
mod reload_handover;
mod request_body;
mod request_id;
mod request_info;
mod response;
mod shared_sockets;
mod sibling_workers;
mod status_page;
mod sticky_clients;
mod stream;
mod stuck_pool;
mod unloaded_aside;

use std::ffi::{c_char, c_void};
use std::ptr;

use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_http_module_t, ngx_int_t, ngx_module_t, NGX_ERROR, NGX_LOG_ALERT,
    NGX_LOG_EMERG, NGX_OK,
};
use ngx::core::{CoreModuleMainConf, NgxCoreModule, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::{HttpModule, HttpModuleMainConf, Merge};

use crate::conf::LocConf;
use crate::ffi::{guard, WsgiModule};

impl HttpModule for WsgiModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: nginx writes the module's indexes before any configuration callback runs and
        // never afterwards; everything here only reads them.
        unsafe { &*ptr::addr_of!(ngx_http_wsgi_module) }
    }

    /// After the http block: the apps are imported in a child process, so that a broken app
    /// fails `nginx -t`, start and reload.
    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        guard("postconfiguration", NGX_ERROR as ngx_int_t, || {
            ffi::log::install();
            let wrong = bitfield_layout::mismatches();
            if !wrong.is_empty() {
                ngx::ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "ngx_http_wsgi_module was built with bindings that place nginx's bitfields \
                     where this nginx's C compiler does not ({}): it would take one of nginx's flags \
                     for another; build it again against these headers (packaging/README.md)",
                    wrong.join("; ")
                );
                return NGX_ERROR as ngx_int_t;
            }
            // SAFETY: postconfiguration, after the core module's set up the body filters.
            unsafe { exec_child::mark_body_temp_files() };
            // SAFETY: postconfiguration, after the core module set up the header filters.
            unsafe { header_filter::install() };
            // SAFETY: nginx passes the live configuration at the end of the http block.
            let ok = unsafe {
                let mc = WsgiModule::main_conf(&*cf).expect("wsgi main configuration");
                conf::python::check_at_configuration(cf, mc)
            };
            if ok {
                NGX_OK as ngx_int_t
            } else {
                NGX_ERROR as ngx_int_t
            }
        })
    }

    /// Merges a location's settings with the levels around it, then gives the locations that
    /// serve an app (or the metrics) their content handler.
    unsafe extern "C" fn merge_loc_conf(
        cf: *mut ngx_conf_t,
        prev: *mut c_void,
        conf: *mut c_void,
    ) -> *mut c_char {
        guard("merge_loc_conf", NGX_CONF_ERROR, || {
            // SAFETY: nginx passes this module's two location configurations of the levels being
            // merged, and the live configuration whose context is the inner level.
            unsafe {
                let (parent, child) = (&*(prev as *const LocConf), &mut *(conf as *mut LocConf));
                let own_app = child.app.index.is_some();
                if child.merge(parent).is_err() || conf::finish_location(cf, parent, child).is_err()
                {
                    return NGX_CONF_ERROR;
                }
                let clcf = conf::core_loc_conf(cf);
                // Another module's content handler here (proxy_pass, fastcgi_pass, ...): beside
                // the location's own app, one of the two would answer unseen; in an `if` or
                // `limit_except` block that inherited the app, the block's own handler answers,
                // as nginx's own inherited handlers leave it.
                let ours = [
                    asgi_handler::content_handler as *const () as usize,
                    handler::content_handler as *const () as usize,
                    status_page::status_handler as *const () as usize,
                ];
                if clcf.handler.is_some_and(|h| !ours.contains(&(h as usize))) {
                    if own_app || child.status {
                        ngx::ngx_conf_log_error!(
                            nginx_sys::NGX_LOG_EMERG,
                            cf,
                            "{} is in a location that another module answers too (proxy_pass, \
                             fastcgi_pass, uwsgi_pass, ...): keep one of them",
                            if child.status {
                                "wsgi_status"
                            } else if child.app.asgi {
                                "asgi_app"
                            } else {
                                "wsgi_app"
                            }
                        );
                        return NGX_CONF_ERROR;
                    }
                    child.app.index = None;
                    return NGX_CONF_OK;
                }
                if own_app && child.status {
                    ngx::ngx_conf_log_error!(
                        nginx_sys::NGX_LOG_EMERG,
                        cf,
                        "wsgi_status is in a location that serves an app: give the metrics a location of their own"
                    );
                    return NGX_CONF_ERROR;
                }
                if child.app.index.is_some() && clcf.name.len > 0 {
                    // As for proxy_pass: `/app` is answered 301 to `/app/` when `/app/` serves
                    // an app (nginx's location lookup does it, as the locations are sorted).
                    // SAFETY: `name` is nginx's copy of the location's name, `len` bytes.
                    let name = std::slice::from_raw_parts(clcf.name.data, clcf.name.len);
                    if name.ends_with(b"/") {
                        clcf.set_auto_redirect(1);
                    }
                }
                if child.app.index.is_some() && child.app.asgi {
                    clcf.handler = Some(asgi_handler::content_handler);
                } else if child.app.index.is_some() {
                    clcf.handler = Some(handler::content_handler);
                } else if child.status {
                    clcf.handler = Some(status_page::status_handler);
                }
            }
            NGX_CONF_OK
        })
    }
}

static NGX_HTTP_WSGI_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(WsgiModule::postconfiguration),
    create_main_conf: Some(WsgiModule::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(WsgiModule::create_loc_conf),
    merge_loc_conf: Some(WsgiModule::merge_loc_conf),
};

// A unit-test executable has no nginx to hand this table to (and none of the nginx symbols its
// hooks reach): it gets an empty descriptor instead, so the linker drops the rest.
#[cfg(not(test))]
ngx::ngx_modules!(ngx_http_wsgi_module);

#[cfg(not(test))]
#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_http_wsgi_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(NGX_HTTP_WSGI_MODULE_CTX) as *mut c_void,
    // nginx only reads the command table, which lives for the whole program.
    commands: ptr::addr_of_mut!(conf::COMMANDS) as *mut _,
    type_: nginx_sys::NGX_HTTP_MODULE as _,
    init_module: Some(init_module),
    init_process: Some(init_process),
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

#[cfg(test)]
#[allow(non_upper_case_globals)]
static mut ngx_http_wsgi_module: ngx_module_t = ngx_module_t::default();

/// The master took a configuration (after its whole cycle was made): the next workers are a
/// new generation for the reload's hand-over and for recycling's `sibling_workers`.
unsafe extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    guard("init_module", NGX_OK as ngx_int_t, || {
        // SAFETY: nginx calls this with the live new cycle, whose configurations are set.
        let cycle = unsafe { &*cycle };
        let apps = conf::cycle_main_conf(cycle).filter(|mc| !mc.python.apps.is_empty());
        if apps.is_some() {
            // The master has one thread; its workers fork from it.
            ngx_wsgi::heap::limit_arenas();
        }
        let handover = apps.is_some_and(|mc| mc.limits.reload_handover());
        let expected = match NgxCoreModule::main_conf(cycle) {
            Some(ccf) if handover && ccf.master != 0 => ccf.worker_processes.max(0) as usize,
            _ => 0,
        };
        reload_handover::configuration_taken(expected);
        // SAFETY: nginx runs init_module on the master's (or the lone process's) one thread.
        unsafe { old_workers::note(apps.is_some()) };
        sibling_workers::map();
        // SAFETY: as above.
        if unsafe { !sticky_clients_taken(cycle) } {
            return NGX_ERROR as ngx_int_t;
        }
        NGX_OK as ngx_int_t
    })
}

/// `wsgi_sticky_clients` of the configuration the master took; false when nginx is to stop
/// (a wrong configuration at `nginx -t` or at the first start).
///
/// # Safety
/// In `init_module`, with the live new cycle.
unsafe fn sticky_clients_taken(cycle: &ngx_cycle_t) -> bool {
    // SAFETY: per the function contract: the master's (or the single process's) listening
    // array, nginx's own flag, and the old cycle's pointer.
    let (groups, testing, first) = unsafe {
        (
            sticky_clients::groups(cycle),
            nginx_sys::ngx_test_config != 0,
            (*cycle.old_cycle).conf_ctx.is_null(),
        )
    };
    // The new cycle's log: nginx's global cycle is still the old one (or the first start's,
    // whose log is the built-in path).
    let log = |level: u32, text: &str| ffi::log::write_log(level as usize, cycle.log, text);
    if !conf::cycle_main_conf(cycle).is_some_and(|mc| mc.limits.sticky_clients()) {
        if !testing {
            if let Some(done) = sticky_clients::let_go(&groups) {
                log(nginx_sys::NGX_LOG_NOTICE, &done);
            }
        }
        return true;
    }
    // nginx -t opens no socket per worker: the configuration alone is checked.
    if testing && !groups.is_empty() {
        return true;
    }
    match sticky_clients::apply(&groups) {
        Ok(done) => {
            log(nginx_sys::NGX_LOG_NOTICE, &done);
            true
        }
        // At a reload, failing here would end the master and leave its workers orphaned
        // (nginx's QUIC module says the same of its program): the new workers start without
        // the stickiness, loudly.
        Err(e) => {
            log(NGX_LOG_EMERG, &e);
            !(testing || first)
        }
    }
}

unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    guard("init_process", NGX_ERROR as ngx_int_t, || {
        inflight::on_asgi_exit(inflight::AsgiExit {
            stuck: asgi_queue::this_loop_stuck,
            give_up_waiting: asgi_queue::give_up_all,
            let_go_of_held: asgi_handler::let_go_of_held,
            cancel_running: || {
                let event_loop = ngx_wsgi::asgi::event_loop::get();
                event_loop.inspect(|l| l.cancel_connections()).is_some()
            },
        });
        inflight::request_deadline(handler::on_deadline);
        inflight::request_deadline(asgi_handler::on_deadline);
        inflight::request_deadline(asgi_ws::handshake_due);
        // SAFETY: the hook runs on the event loop, as the inflight timer does.
        inflight::before_forced_exit(|| unsafe { overload::flush() });
        // SAFETY: the hooks run on the event loop, the thread that starts Python below.
        inflight::before_forced_exit(|| unsafe { lifecycle::before_forced_exit() });
        // SAFETY: nginx calls this once per process, on its event loop, with the live cycle.
        match unsafe { lifecycle::start_worker(cycle, handler::complete) } {
            Ok(()) => NGX_OK as ngx_int_t,
            Err(e) => {
                ffi::log::cycle_log(NGX_LOG_EMERG as usize, &e);
                NGX_ERROR as ngx_int_t
            }
        }
    })
}

unsafe extern "C" fn exit_process(cycle: *mut ngx_cycle_t) {
    guard("exit_process", (), || {
        // SAFETY: on the event loop; nginx no longer runs the cancelable flush timer, which
        // this disarms.
        unsafe { overload::flush() };
        // SAFETY: nginx calls this once, on its event loop, with the live cycle.
        if let Err(e) = unsafe { lifecycle::stop_worker(cycle) } {
            ffi::log::cycle_log(NGX_LOG_ALERT as usize, &e);
        }
    })
}
