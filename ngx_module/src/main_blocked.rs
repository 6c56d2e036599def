//! The hold the module's requests keep on their main request (`r->main->blocked`) while an app
//! has them: nginx then neither frees the main request's pool nor lets a termination (the
//! client gone, the worker's exit) finalize it under the app's thread or task.
//!
//! nginx's `blocked` is 8 bits: a page with 256 or more of the module's subrequests at once (SSI
//! includes) would wrap it to 0 and lose the hold for all of them. A main request's own hold is
//! one; its subrequests share one more, counted here. Event-loop thread only.

use nginx_sys::ngx_http_request_t;

use crate::ffi::loop_cell::LoopCell;

/// Main requests (by address) with the module's subrequests outstanding, and how many.
static SUBREQUESTS: LoopCell<Vec<(usize, usize)>> = LoopCell::new(Vec::new());

/// `r` is handed to an app: its main request stays until [`release`].
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn hold(r: *mut ngx_http_request_t) {
    // SAFETY: per the function contract; the list is used on this thread only.
    unsafe {
        let main = (*r).main;
        if r != main {
            let held = SUBREQUESTS.get_mut();
            if let Some((_, n)) = held.iter_mut().find(|(m, _)| *m == main as usize) {
                *n += 1;
                return;
            }
            held.push((main as usize, 1));
        }
        (*main).set_blocked((*main).blocked() + 1);
    }
}

/// The app is done with `r` (or it never reached one): the hold of [`hold`] is let go.
///
/// # Safety
/// Event-loop thread; `r` is live and was held.
pub(crate) unsafe fn release(r: *mut ngx_http_request_t) {
    // SAFETY: per the function contract; the list is used on this thread only.
    unsafe {
        let main = (*r).main;
        if r != main {
            let held = SUBREQUESTS.get_mut();
            let Some(at) = held.iter().position(|(m, _)| *m == main as usize) else {
                debug_assert!(false, "a subrequest released without its hold");
                return;
            };
            held[at].1 -= 1;
            if held[at].1 > 0 {
                return;
            }
            held.swap_remove(at);
        }
        (*main).set_blocked((*main).blocked() - 1);
    }
}
