//! `wsgi_intercept_errors on`: the statuses of a location's `error_page`s are nginx's to answer,
//! as `uwsgi_intercept_errors` makes them for a proxied app: an app's 404 or 500 then gets the
//! site's error page, not the app's body (see [`ngx_wsgi::intercepted`]); and whether a status
//! the module finalizes a request with has an `error_page` (a `wsgi_read_timeout`'s 504).

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
    // SAFETY: per the function contract.
    for page in unsafe { error_pages(r) } {
        if let Ok(status) = u16::try_from(page.status) {
            set.insert(status);
        }
    }
    set
}

/// Whether nginx would answer `status`, finalized on `r` now, with an `error_page` of its
/// location (as `ngx_http_special_response_handler` decides: not within an error page already,
/// unless `recursive_error_pages`, nor past the redirect limit).
///
/// # Safety
/// `r` is a live request on the event loop.
pub(crate) unsafe fn has_error_page(r: *mut ngx_http_request_t, status: u16) -> bool {
    // SAFETY: per the function contract.
    unsafe {
        (*r).error_page() == 0
            && (*r).uri_changes() != 0
            && error_pages(r)
                .iter()
                .any(|p| u16::try_from(p.status) == Ok(status))
    }
}

/// The `error_page`s of `r`'s location.
///
/// # Safety
/// `r` is a live request on the event loop; the pages live as long as its configuration.
unsafe fn error_pages<'a>(r: *mut ngx_http_request_t) -> &'a [ngx_http_err_page_t] {
    // SAFETY: per the function contract; every request has its location's core configuration.
    let Some(clcf) = (unsafe { NgxHttpCoreModule::location_conf(&*r) }) else {
        return &[];
    };
    if clcf.error_pages.is_null() {
        return &[];
    }
    // SAFETY: `error_pages` is an array of `ngx_http_err_page_t` (nginx's `error_page`), which
    // lives as long as the configuration.
    unsafe {
        let array = &*clcf.error_pages;
        std::slice::from_raw_parts(array.elts as *const ngx_http_err_page_t, array.nelts)
    }
}
