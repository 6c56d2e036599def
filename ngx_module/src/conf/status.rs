//! `wsgi_status`: a location that answers the metrics, and the shared memory zone the workers
//! count into (which exists only when some location has `wsgi_status`).

use std::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_shared_memory_add, ngx_shm_zone_t};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use super::{main_conf, LocConf};
use crate::ffi::{guard, module};

/// The `wsgi_status` zone (NULL when no location asks for metrics).
pub(crate) struct StatusZone(pub *mut ngx_shm_zone_t);

impl Default for StatusZone {
    fn default() -> Self {
        StatusZone(std::ptr::null_mut())
    }
}

pub(crate) unsafe extern "C" fn set_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_status", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration; inside an http block the main
        // configuration exists; nginx copies the zone's name.
        unsafe {
            let lc = &mut *(conf as *mut LocConf);
            lc.status = true;
            let mc = main_conf(cf);
            if mc.status_zone.0.is_null() {
                let mut name = ngx::ngx_string!("wsgi_status");
                let zone = ngx_shared_memory_add(
                    cf,
                    &mut name,
                    crate::metrics::ZONE_SIZE,
                    module() as *const _ as *mut c_void,
                );
                if zone.is_null() {
                    return NGX_CONF_ERROR;
                }
                (*zone).init = Some(crate::metrics::init_zone);
                mc.status_zone = StatusZone(zone);
            }
        }
        NGX_CONF_OK
    })
}
