//! Rust-side logging into Apache's error log: `tracing` events (the core's tracebacks,
//! `wsgi.errors`, Python's `logging`) become error-log entries of the matching level, from any
//! thread. On a thread serving a request, entries are the request's: they go to its virtual
//! host's `ErrorLog`, with its `[client ...]` and its `LogLevel`. The watchdog's entry about a
//! timed-out request goes to that request's virtual host too.

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, CString};
use std::sync::Mutex;

use tracing_core::Level;

use crate::bindings::{
    ap_log_error_, ap_log_rerror_, ap_server_conf, request_rec, server_rec, APLOG_DEBUG, APLOG_ERR,
    APLOG_INFO, APLOG_WARNING,
};
/// Whatever hands out turns on a request (its side): a log entry about the request uses the
/// request, so it is written in the calling thread's turn.
pub(crate) trait Turns {
    /// Runs `f` in the calling thread's turn.
    fn in_turn(&self, f: &mut dyn FnMut());
}

thread_local! {
    /// The request this thread serves (NULL outside one) and who hands out its turns.
    static REQUEST: Cell<(*const request_rec, Option<*const dyn Turns>)> =
        const { Cell::new((std::ptr::null(), None)) };
    /// Outside a request: the virtual host and client that entries are about (NULL: none).
    static ABOUT: RefCell<(*const server_rec, String)> =
        const { RefCell::new((std::ptr::null(), String::new())) };
}

/// The lines of one multi-line entry stay together in the log.
static ENTRY: Mutex<()> = Mutex::new(());

/// Runs `f` with `r` as the calling thread's request for log entries, which use the request in
/// the thread's turn of `turns`.
///
/// # Safety
/// `r` is a live request served by the calling thread for the whole call; `turns` hands out its
/// turns and outlives the call.
pub(crate) unsafe fn with_request<R>(
    r: *const request_rec,
    turns: &dyn Turns,
    f: impl FnOnce() -> R,
) -> R {
    type Current = (*const request_rec, Option<*const dyn Turns>);
    /// Puts back the request that was current before (an app's subrequest, served on its main
    /// request's thread, ends before it).
    struct Reset(Current);
    impl Drop for Reset {
        fn drop(&mut self) {
            REQUEST.set(self.0);
        }
    }
    // SAFETY: only the lifetime is erased; the pointer is replaced (Reset) before `turns` can go.
    let turns: *const dyn Turns = unsafe { std::mem::transmute(turns) };
    let _reset = Reset(REQUEST.replace((r, Some(turns))));
    f()
}

/// Runs `f` with entries written to virtual host `server`'s log, marked with `client` (entries
/// about a request, from a thread that must not use the request itself).
///
/// # Safety
/// `server` belongs to the running configuration.
pub(crate) unsafe fn with_server(server: *const server_rec, client: &str, f: &mut dyn FnMut()) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ABOUT.with_borrow_mut(|about| *about = (std::ptr::null(), String::new()));
        }
    }
    ABOUT.with_borrow_mut(|about| *about = (server, client.to_owned()));
    let _reset = Reset;
    f()
}

/// Writes `msg` to the error log at `level` (an `APLOG_*` value): the request's when the calling
/// thread serves one, else the main server's. Apache escapes control characters inside an entry
/// (a newline becomes `\n`), so a multi-line text such as a traceback is written one entry per
/// line, the way Apache users read them.
pub(crate) fn write(level: c_int, msg: &str) {
    match REQUEST.get() {
        (request, None) => write_lines(level, request, msg),
        // SAFETY: the turns outlive the `with_request` call that set them.
        (request, Some(turns)) => unsafe {
            (*turns).in_turn(&mut || write_lines(level, request, msg))
        },
    }
}

fn write_lines(level: c_int, request: *const request_rec, msg: &str) {
    let (about, client) = ABOUT.with_borrow(|(s, c)| (*s, c.clone()));
    let server = if about.is_null() {
        // SAFETY: Apache sets `ap_server_conf` once the configuration is read, before any
        // request or child starts; NULL (early configuration) makes Apache write to stderr.
        unsafe { ap_server_conf }
    } else {
        about
    };
    let _entry = msg
        .contains('\n')
        .then(|| ENTRY.lock().unwrap_or_else(|e| e.into_inner()));
    for line in msg.trim_end().split('\n') {
        let line = line.trim_end_matches('\r').replace('\0', "\\0");
        let line = if client.is_empty() {
            line
        } else {
            format!("[client {client}] {line}")
        };
        let Ok(text) = CString::new(line) else {
            continue;
        };
        // SAFETY: "%s" reads exactly one NUL-terminated string, `text`; the module index is the
        // one Apache assigned when it loaded the module; `request` is live (see `with_request`).
        unsafe {
            if !request.is_null() {
                ap_log_rerror_(
                    c"mod_ngx_wsgi.c".as_ptr(),
                    0,
                    crate::handle::module_index(),
                    level,
                    0,
                    request,
                    c"%s".as_ptr(),
                    text.as_ptr(),
                );
                continue;
            }
            ap_log_error_(
                c"mod_ngx_wsgi.c".as_ptr(),
                0,
                crate::handle::module_index(),
                level,
                0,
                server,
                c"%s".as_ptr(),
                text.as_ptr(),
            );
        }
    }
}

fn ap_level(level: &Level) -> c_int {
    (match *level {
        Level::ERROR => APLOG_ERR,
        Level::WARN => APLOG_WARNING,
        Level::INFO => APLOG_INFO,
        _ => APLOG_DEBUG,
    }) as c_int
}

/// Routes `tracing` events to the error log.
struct ApacheLog;

impl ngx_wsgi::server_log::ErrorLog for ApacheLog {
    fn enabled(&self, level: &Level) -> bool {
        let (request, _) = REQUEST.get();
        let about = ABOUT.with_borrow(|(s, _)| *s);
        // SAFETY: see `write`; only a level is read, the request's (its LogLevel) when the thread
        // serves one, else that of the server the entry is about.
        let max = unsafe {
            let s = if about.is_null() {
                ap_server_conf
            } else {
                about
            };
            if !request.is_null() && !(*request).log.is_null() {
                (*(*request).log).level
            } else if s.is_null() {
                APLOG_DEBUG as c_int
            } else {
                (*s).log.level
            }
        };
        ap_level(level) <= max
    }

    fn write(&self, level: &Level, text: &str) {
        write(ap_level(level), text);
    }
}

/// Installs the error log as the process's `tracing` subscriber (once; children inherit it).
pub(crate) fn install() {
    ngx_wsgi::server_log::install(ApacheLog);
}
