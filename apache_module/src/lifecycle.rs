//! Process life: the configuration registry is reset before each reading of the configuration
//! (in the parent, which never starts Python); each child starts its own interpreter and imports
//! the apps in `child_init`, before its threads serve requests, and finalises it when it exits
//! (after its deadline thread and the core's watchdog have stopped).

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ngx_wsgi::{interpreter, AppSpec, Apps};

use crate::bindings::{
    apr_pool_cleanup_null, apr_pool_cleanup_register, apr_pool_t, apr_status_t, server_rec,
    APLOG_ALERT, APLOG_EMERG, APR_SUCCESS, OK,
};
use crate::ffi_guard::guard;
use crate::log;

/// Whether this child's apps were imported (false: every request to an app is a 500).
static READY: AtomicBool = AtomicBool::new(false);

pub(crate) fn ready() -> bool {
    READY.load(Ordering::Acquire)
}

/// The error log's line for a prefork child stopped in the middle of a request.
static STOPPED_MID_REQUEST: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// How many app requests this child's threads are in.
static SERVING: AtomicUsize = AtomicUsize::new(0);

/// A thread of this child is in an app's request for as long as this lives.
pub(crate) struct Serving(());

impl Serving {
    pub(crate) fn begin() -> Self {
        SERVING.fetch_add(1, Ordering::SeqCst);
        Serving(())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) unsafe extern "C" fn pre_config(
    _pconf: *mut apr_pool_t,
    _plog: *mut apr_pool_t,
    _ptemp: *mut apr_pool_t,
) -> c_int {
    guard("pre_config", OK as c_int, || {
        log::install();
        crate::config::reset();
        OK as c_int
    })
}

pub(crate) unsafe extern "C" fn child_init(pchild: *mut apr_pool_t, _s: *mut server_rec) {
    guard("child_init", (), || {
        crate::graceful::child_init();
        if crate::graceful::prefork() {
            let _ = STOPPED_MID_REQUEST.set(
                format!(
                    "[ngx_wsgi:notice] [pid {}] wsgi: this child was stopped in the middle of a \
                     request (prefork's stop or restart): it exits at once, without finalising \
                     Python (atexit handlers are not run)\n",
                    std::process::id()
                )
                .into_bytes(),
            );
        }
        crate::metrics::child_init();
        let registry = crate::config::snapshot();
        if registry.apps.is_empty() {
            return;
        }
        crate::recycle::configure(&registry);
        if let Err(e) = ngx_wsgi::signals::leave_children_to_their_parents() {
            log::write(APLOG_ALERT as c_int, &format!("wsgi: SIGCHLD: {e}"));
        }
        crate::fork_child::close_listeners_in_children();
        if let Err(e) = interpreter::initialize(&registry.python) {
            log::write(APLOG_EMERG as c_int, &format!("wsgi: {e}"));
            crate::recycle::retry_load_later();
            return;
        }
        // SAFETY: the child's pool lives until the child exits; the cleanup runs then, on the
        // child's main thread (the one running this hook), after its worker threads are joined.
        unsafe {
            apr_pool_cleanup_register(
                pchild,
                std::ptr::null(),
                Some(child_exit),
                Some(apr_pool_cleanup_null),
            )
        };
        let specs: Vec<AppSpec> = registry.apps.iter().map(|a| a.spec.clone()).collect();
        let failed = Apps::load_all(&specs);
        for (i, e) in &failed {
            log::write(
                APLOG_EMERG as c_int,
                &format!(
                    "wsgi: {} cannot be loaded: {e}",
                    registry.apps[*i].describe()
                ),
            );
        }
        if failed.is_empty() {
            READY.store(true, Ordering::Release);
        } else {
            crate::recycle::retry_load_later();
        }
    })
}

unsafe extern "C" fn child_exit(_data: *mut c_void) -> apr_status_t {
    guard("child exit", APR_SUCCESS as apr_status_t, || {
        if crate::graceful::prefork() && SERVING.load(Ordering::SeqCst) > 0 {
            // prefork's stop and restart (SIGTERM, SIGHUP) end the child from the signal's
            // handler, on its one thread, in the middle of the request it was serving: Python
            // cannot be finalised under a frame of its own (the wait for the GIL that frame holds
            // would last until the parent's SIGKILL), and nothing of the request's may run.
            // Only what a signal's handler may do: Apache's logging takes locks (the time
            // zone's, syslog's) the interrupted code may hold. The line was made at the child's
            // start; the main error log is the child's stderr.
            if let Some(line) = STOPPED_MID_REQUEST.get() {
                // SAFETY: write(2) of a buffer that lives as long as the process.
                unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len()) };
            }
            // SAFETY: ends the process at once, as the line said.
            unsafe { libc::_exit(0) }
        }
        READY.store(false, Ordering::Release);
        crate::deadline::stop();
        match interpreter::finalize(crate::config::snapshot().shutdown_timeout(), None) {
            Ok(interpreter::Finalized::Cleanly) => {}
            // The app's threads still run Python: nothing of the child's teardown may meet them.
            // SAFETY: ends the process at once, as the log entry just said.
            Ok(interpreter::Finalized::ThreadsLeft) => unsafe { libc::_exit(0) },
            Err(e) => log::write(APLOG_ALERT as c_int, &format!("wsgi: {e}")),
        }
        APR_SUCCESS as apr_status_t
    })
}
