//! `wsgi_intercept_errors on`: the statuses of a location's `error_page`s are nginx's to answer,
//! as `uwsgi_intercept_errors` makes them for a proxied app: an app's 404 or 500 then gets the
//! site's error page, not the app's body (see [`ngx_wsgi::intercepted`]).

use nginx_sys::{ngx_http_err_page_t, ngx_http_request_t};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx_wsgi::intercepted::InterceptedStatuses;

use crate::conf::LocConf;

/// The statuses `r`'s location has an `error_page` for, where the location intercepts errors.
///
/// # Safety
/// `r` is a live request on the event loop.
pub(crate) unsafe fn statuses(r: *mut ngx_http_request_t, lc: &LocConf) -> InterceptedStatuses {
    let mut set = InterceptedStatuses::NONE;
    if !lc.intercept_errors.on() {
        return set;
    }
    // SAFETY: per the function contract; every request has its location's core configuration.
    let Some(clcf) = (unsafe { NgxHttpCoreModule::location_conf(&*r) }) else {
        return set;
    };
    if clcf.error_pages.is_null() {
        return set;
    }
    // SAFETY: `error_pages` is an array of `ngx_http_err_page_t` (nginx's `error_page`), which
    // lives as long as the configuration.
    let pages = unsafe {
        let array = &*clcf.error_pages;
        std::slice::from_raw_parts(array.elts as *const ngx_http_err_page_t, array.nelts)
    };
    for page in pages {
        if let Ok(status) = u16::try_from(page.status) {
            set.insert(status);
        }
    }
    set
}
