//! Worker start and exit: one interpreter per worker, the apps imported before the first request,
//! Python finalised after nginx's thread pools have stopped.

use nginx_sys::{
    ngx_cycle_t, ngx_int_t, ngx_process, NGX_ERROR, NGX_LOG_ALERT, NGX_LOG_EMERG, NGX_OK,
    NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};
use ngx::http::HttpModuleConfExt;
use ngx_wsgi::{interpreter, AppSpec, Apps};

use crate::config::MainConf;
use crate::ffi_guard::guard;
use crate::log::cycle_log;
use crate::module;

unsafe fn main_conf<'a>(cycle: *mut ngx_cycle_t) -> Option<&'a MainConf> {
    // SAFETY: the cycle is live; without an http block there is no main configuration.
    unsafe {
        Some(
            (*cycle)
                .http_main_conf_unchecked::<MainConf>(module())?
                .as_ref(),
        )
    }
}

/// Whether this process serves requests (a worker, or nginx without a master); cache manager and
/// loader processes run `init_process` too, but must not start Python.
fn serves_requests() -> bool {
    // SAFETY: plain read of nginx's process role, set before init_process runs.
    let role = unsafe { ngx_process } as u32;
    role == NGX_PROCESS_WORKER || role == NGX_PROCESS_SINGLE
}

pub(crate) unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    guard("init_process", NGX_ERROR as ngx_int_t, || {
        if !serves_requests() {
            return NGX_OK as ngx_int_t;
        }
        // SAFETY: nginx passes the live cycle.
        let Some(mc) = (unsafe { main_conf(cycle) }) else {
            return NGX_OK as ngx_int_t;
        };
        crate::metrics::attach(mc.status_zone);
        if mc.apps.is_empty() {
            return NGX_OK as ngx_int_t;
        }
        let max_rss = if mc.max_rss == usize::MAX {
            0
        } else {
            mc.max_rss
        };
        crate::recycle::configure(mc.max_requests, mc.max_requests_jitter, max_rss);
        // SAFETY: once per worker, on the event loop.
        if let Err(e) = unsafe { crate::notify::init(cycle) } {
            cycle_log(NGX_LOG_EMERG as usize, &format!("wsgi: {e}"));
            return NGX_ERROR as ngx_int_t;
        }
        if let Err(e) = interpreter::initialize(&mc.python) {
            cycle_log(NGX_LOG_EMERG as usize, &format!("wsgi: {e}"));
            return NGX_ERROR as ngx_int_t;
        }
        let specs: Vec<AppSpec> = mc.apps.iter().map(|a| a.spec.clone()).collect();
        if let Err((i, e)) = Apps::load_all(&specs) {
            cycle_log(
                NGX_LOG_EMERG as usize,
                &format!("{} cannot be loaded: {e}", mc.apps[i].describe()),
            );
            return NGX_ERROR as ngx_int_t;
        }
        NGX_OK as ngx_int_t
    })
}

pub(crate) unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    guard("exit_process", (), || {
        if let Err(e) = interpreter::finalize() {
            cycle_log(NGX_LOG_ALERT as usize, &format!("wsgi: {e}"));
        }
    })
}
