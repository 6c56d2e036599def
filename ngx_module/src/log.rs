//! Rust-side logging into nginx's error log: `tracing` events (the core's tracebacks, `wsgi.errors`)
//! become error-log entries of the matching level, from any thread.

use nginx_sys::{
    ngx_cached_err_log_time, ngx_cycle, ngx_log_t, ngx_uint_t, NGX_LOG_DEBUG, NGX_LOG_ERR,
    NGX_LOG_INFO, NGX_LOG_WARN,
};
use tracing_core::Level;

/// nginx cuts an entry at NGX_MAX_ERROR_STR (2048) bytes including its own prefix; longer texts
/// (tracebacks) are split at line ends into several entries of at most this size.
const ENTRY_MAX: usize = 1800;

/// Writes `msg` to the current cycle's error log at `level`.
pub(crate) fn cycle_log(level: usize, msg: &str) {
    // SAFETY: `ngx_cycle` is set before any module code runs and its log lives as long as it.
    let log = unsafe {
        let cycle = ngx_cycle;
        if cycle.is_null() {
            return;
        }
        (*cycle).log
    };
    write_log(level, log, msg);
}

/// Writes `msg` to `log` at `level` as one entry. nginx cuts an entry at 2048 bytes, so a longer
/// one (a traceback) is written the way nginx writes entries, straight to each log file; only
/// logs with a writer of their own (syslog, memory) get it in several entries.
pub(crate) fn write_log(level: usize, log: *mut ngx_log_t, msg: &str) {
    // SAFETY: callers pass a live nginx log.
    if log.is_null() || level > unsafe { (*log).log_level } {
        return;
    }
    let msg = msg.trim_end();
    // SAFETY: the log chain is live; nginx sorts it by level, most verbose first.
    let has_writer = unsafe {
        let mut l = log;
        let mut found = false;
        while !l.is_null() {
            found |= (*l).writer.is_some() || (*l).file.is_null();
            l = (*l).next;
        }
        found
    };
    if msg.len() <= ENTRY_MAX || has_writer {
        for piece in ngx_wsgi::log_text::split_entries(msg, ENTRY_MAX) {
            // SAFETY: `log` is live; the "%*s" format reads exactly `piece.len()` bytes.
            unsafe { ngx::log::log_error(level as ngx_uint_t, log, 0, piece.as_bytes()) };
        }
        return;
    }
    // SAFETY: nginx's cached time string is always valid; the log files are open.
    unsafe {
        let time = ngx_cached_err_log_time;
        let time = String::from_utf8_lossy(crate::ngx_bytes(&time)).into_owned();
        let entry = format!(
            "{time} [{}] {}#{}: {msg}\n",
            LEVELS.get(level).copied().unwrap_or("error"),
            libc::getpid(),
            libc::gettid()
        );
        let mut l = log;
        while !l.is_null() && level <= (*l).log_level {
            ngx_wsgi::log_text::write_all((*(*l).file).fd, entry.as_bytes());
            l = (*l).next;
        }
    }
}

/// nginx's names of the log levels, by number.
const LEVELS: [&str; 9] = [
    "", "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug",
];

fn ngx_level(level: &Level) -> usize {
    (match *level {
        Level::ERROR => NGX_LOG_ERR,
        Level::WARN => NGX_LOG_WARN,
        Level::INFO => NGX_LOG_INFO,
        _ => NGX_LOG_DEBUG,
    }) as usize
}

/// The error log of the running cycle, as the core's log.
struct NginxLog;

impl ngx_wsgi::server_log::ErrorLog for NginxLog {
    fn enabled(&self, level: &Level) -> bool {
        // SAFETY: see `cycle_log`; only the level is read.
        let max = unsafe {
            if ngx_cycle.is_null() {
                0
            } else {
                (*(*ngx_cycle).log).log_level
            }
        };
        ngx_level(level) <= max
    }

    fn write(&self, level: &Level, text: &str) {
        cycle_log(ngx_level(level), text);
    }
}

/// Installs the nginx log as the process's `tracing` subscriber (once; workers inherit it).
pub(crate) fn install() {
    ngx_wsgi::server_log::install(NginxLog);
}
