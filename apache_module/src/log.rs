//! Rust-side logging into Apache's error log: `tracing` events (the core's tracebacks,
//! `wsgi.errors`, Python's `logging`) become error-log entries of the matching level, from any
//! thread. On a thread serving a request, entries are the request's: they go to its virtual
//! host's `ErrorLog`, with its `[client ...]` and its `LogLevel`.

use std::cell::Cell;
use std::ffi::{c_int, CString};
use std::fmt::Write as _;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Level, Metadata, Subscriber};

use crate::bindings::{
    ap_log_error_, ap_log_rerror_, ap_server_conf, request_rec, APLOG_DEBUG, APLOG_ERR, APLOG_INFO,
    APLOG_WARNING,
};

thread_local! {
    /// The request this thread serves (NULL outside one).
    static REQUEST: Cell<*const request_rec> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with `r` as the calling thread's request for log entries.
///
/// # Safety
/// `r` is a live request served by the calling thread for the whole call.
pub(crate) unsafe fn with_request<R>(r: *const request_rec, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REQUEST.set(std::ptr::null());
        }
    }
    REQUEST.set(r);
    let _reset = Reset;
    f()
}

/// Writes `msg` to the error log at `level` (an `APLOG_*` value): the request's when the calling
/// thread serves one, else the main server's. Apache escapes control characters inside an entry
/// (a newline becomes `\n`), so a multi-line text such as a traceback is written one entry per
/// line, the way Apache users read them.
pub(crate) fn write(level: c_int, msg: &str) {
    let request = REQUEST.get();
    // SAFETY: Apache sets `ap_server_conf` once the configuration is read, before any request or
    // child starts; NULL (early configuration) makes Apache write to stderr.
    let server = unsafe { ap_server_conf };
    for line in msg.trim_end().split('\n') {
        let Ok(text) = CString::new(line.trim_end_matches('\r').replace('\0', "\\0")) else {
            continue;
        };
        // SAFETY: "%s" reads exactly one NUL-terminated string, `text`; the module index is the
        // one Apache assigned when it loaded the module; `request` is live (see `with_request`).
        unsafe {
            if !request.is_null() {
                ap_log_rerror_(
                    c"mod_ngx_wsgi.c".as_ptr(),
                    0,
                    crate::module_index(),
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
                crate::module_index(),
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

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.0.insert_str(0, &text);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for ApacheLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let request = REQUEST.get();
        // SAFETY: see `write`; only a level is read, the request's (its LogLevel) when the thread
        // serves one.
        let max = unsafe {
            let s = ap_server_conf;
            if !request.is_null() && !(*request).log.is_null() {
                (*(*request).log).level
            } else if s.is_null() {
                APLOG_DEBUG as c_int
            } else {
                (*s).log.level
            }
        };
        ap_level(metadata.level()) <= max
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = Message::default();
        event.record(&mut message);
        let target = event.metadata().target();
        write(
            ap_level(event.metadata().level()),
            &format!("{target}: {}", message.0),
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Installs the error log as the process's `tracing` subscriber (once; children inherit it).
pub(crate) fn install() {
    let _ = tracing::subscriber::set_global_default(ApacheLog);
}
