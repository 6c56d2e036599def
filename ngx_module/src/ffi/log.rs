//! Rust-side logging into nginx's error log: `tracing` events (the core's tracebacks, `wsgi.errors`)
//! become error-log entries of the matching level, from any thread.
//!
//! nginx's log writers are event-loop code. Writing to a log *file* from another thread is what
//! nginx's `write()`-based file logging tolerates (one `write` per entry, `O_APPEND`), but the
//! syslog and memory writers keep unsynchronised state: an entry for a log that has such a
//! writer, made on a pool thread, is queued and written by the event loop when the notifier
//! wakes it ([`set_waker`], [`flush_deferred`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use nginx_sys::{
    ngx_cached_err_log_time, ngx_cycle, ngx_http_request_t, ngx_log_t, ngx_uint_t, NGX_LOG_ALERT,
    NGX_LOG_DEBUG, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_WARN,
};
use tracing_core::Level;

/// nginx cuts an entry at NGX_MAX_ERROR_STR (2048) bytes including its own prefix; longer texts
/// (tracebacks) are split at line ends into several entries of at most this size when a log has a
/// writer of its own.
const ENTRY_MAX: usize = 1800;

/// Entries made off the event loop for logs whose writers are loop-only, with their levels and
/// logs (as addresses: they live as long as the worker's cycle).
static DEFERRED: Mutex<Vec<(usize, usize, String)>> = Mutex::new(Vec::new());
/// Wakes the event loop to write deferred entries (set once the notifier exists).
static WAKER: OnceLock<fn()> = OnceLock::new();
/// The event loop is blocked in a worker's start (importing the apps) or exit (waiting for the
/// app's tasks and threads): its cached time is stale, and nothing flushes deferred entries
/// until it is back.
static LOOP_WAITS: AtomicBool = AtomicBool::new(false);

thread_local! {
    static ON_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as the event loop (from `init_process`).
pub(crate) fn this_thread_is_the_loop() {
    ON_LOOP.with(|on| on.set(true));
}

/// `wake` makes the event loop call [`flush_deferred`] soon (any thread).
pub(crate) fn set_waker(wake: fn()) {
    let _ = WAKER.set(wake);
}

/// Says whether the event loop is blocked (importing the apps at a worker's start, waiting for
/// other threads at its exit), so that other threads' entries carry their own time.
pub(crate) fn loop_waits(waits: bool) {
    LOOP_WAITS.store(waits, Ordering::Release);
}

/// Writes the entries other threads left for the event loop.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn flush_deferred() {
    let entries = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(|e| e.into_inner()));
    for (level, log, msg) in entries {
        write_log(level, log as *mut ngx_log_t, &msg);
    }
}

/// Where the log entries about a request go (see `ngx_wsgi::server_log::routed`): its
/// location's `error_log` (`error_log` in a `server` or `location`, as nginx's own entries
/// about the request), 0 where that is the main one.
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn route_of(r: &ngx_http_request_t) -> usize {
    use ngx::http::HttpModuleLocationConf;
    let Some(clcf) = ngx::http::NgxHttpCoreModule::location_conf(r) else {
        return 0;
    };
    // SAFETY: the cycle lives as long as the worker, its log too.
    let main = unsafe { (*ngx_cycle).log };
    match clcf.error_log {
        log if log.is_null() || log == main => 0,
        // The configuration's, which lives as long as the worker's cycle.
        log => log as usize,
    }
}

/// The log this thread's entries go to now: its request's (see [`route_of`]), else the
/// cycle's; null before there is a cycle.
fn routed_log() -> *mut ngx_log_t {
    match ngx_wsgi::server_log::route() {
        0 => {
            // SAFETY: see `cycle_log`.
            let cycle = unsafe { ngx_cycle };
            if cycle.is_null() {
                std::ptr::null_mut()
            } else {
                // SAFETY: as above.
                unsafe { (*cycle).log }
            }
        }
        route => route as *mut ngx_log_t,
    }
}

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

/// Writes `msg` at `alert` to the cycle's error log or, where that log's descriptor is no longer
/// the log (`log_intact` false), to stderr (which nginx points at the error log when it is a
/// file): the last words of a worker whose descriptors an app closed.
pub(crate) fn alert_even_without_log(msg: &str, log_intact: bool) {
    if log_intact {
        cycle_log(NGX_LOG_ALERT as usize, msg);
        return;
    }
    // SAFETY: plain reads of the process's ids.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    let entry = format!("{} [alert] {pid}#{tid}: {msg}\n", local_time_now());
    ngx_wsgi::log_text::write_all(libc::STDERR_FILENO, entry.as_bytes());
}

/// The descriptor of the cycle's error log file (None: it has none).
pub(crate) fn cycle_log_fd() -> Option<libc::c_int> {
    // SAFETY: `ngx_cycle` and its log live as long as the process.
    unsafe {
        let cycle = ngx_cycle;
        if cycle.is_null() || (*cycle).log.is_null() || (*(*cycle).log).file.is_null() {
            return None;
        }
        Some((*(*(*cycle).log).file).fd)
    }
}

/// Writes `msg` to `log` at `level`, as one entry where the log is a file.
pub(crate) fn write_log(level: usize, log: *mut ngx_log_t, msg: &str) {
    write_entry(level, log, msg, Deferral::QueuedOffTheLoop);
}

/// Whether an entry for a log with loop-only writers (syslog, memory) may wait for the loop.
#[derive(PartialEq)]
enum Deferral {
    /// Made off the loop, it is queued for the loop.
    QueuedOffTheLoop,
    /// Written now from any thread: the process ends next and its loop is stuck, or it has
    /// none (a process the app forked).
    Never,
}

fn write_entry(level: usize, log: *mut ngx_log_t, msg: &str, mut deferral: Deferral) {
    if ngx_wsgi::forked::in_forked_child() {
        // A process the app forked has no event loop to write queued entries: its one thread
        // writes them.
        deferral = Deferral::Never;
    }
    // SAFETY: callers pass a live nginx log.
    if log.is_null() || level > unsafe { (*log).log_level } {
        return;
    }
    let msg = msg.trim_end();
    let on_loop = ON_LOOP.with(|on| on.get());
    if on_loop {
        // The loop may have been blocked since its last turn (a worker's exit waits for the
        // app's tasks and threads): the entry's time is now, not nginx's cached one.
        // SAFETY: the event loop's thread, where nginx itself updates its cached time.
        unsafe { nginx_sys::ngx_time_update() };
    }
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
    if has_writer {
        match WAKER.get() {
            Some(wake) if !on_loop && deferral == Deferral::QueuedOffTheLoop => {
                let wake_now = {
                    let mut queue = DEFERRED.lock().unwrap_or_else(|e| e.into_inner());
                    queue.push((level, log as usize, msg.to_owned()));
                    queue.len() == 1
                };
                if wake_now {
                    wake();
                }
            }
            // The loop itself, a process with no other thread yet (configuration), or last words.
            _ => {
                if deferral == Deferral::Never && !on_loop {
                    // SAFETY: nginx's time update is guarded by its own trylock, and nginx's
                    // thread pools call it off the loop too; the loop that would is stuck.
                    unsafe { nginx_sys::ngx_time_update() };
                }
                for piece in ngx_wsgi::log_text::split_entries(msg, ENTRY_MAX) {
                    ngx::ngx_log_error!(level as ngx_uint_t, log, "{}", piece);
                }
            }
        }
        return;
    }
    let own_time = !on_loop && LOOP_WAITS.load(Ordering::Acquire);
    if msg.len() <= ENTRY_MAX && !own_time {
        ngx::ngx_log_error!(level as ngx_uint_t, log, "{}", msg);
        return;
    }
    // nginx formats an entry into a 2 KiB buffer: a longer one (a traceback) cannot go through
    // its formatter whole. For log files it is written the way nginx writes an entry (its cached
    // time, level, pid#tid prefix, one `write` per file), so that a traceback stays one entry.
    // SAFETY: nginx's cached time string is always valid; the log files are open.
    unsafe {
        let time = if own_time {
            local_time_now()
        } else {
            let cached = ngx_cached_err_log_time;
            String::from_utf8_lossy(super::ngx_bytes(&cached)).into_owned()
        };
        let entry = format!(
            "{time} [{}] {}#{}: {msg}\n",
            LEVELS.get(level).copied().unwrap_or("error"),
            libc::getpid(),
            libc::gettid()
        );
        let mut l = log;
        let mut wrote_stderr = false;
        while !l.is_null() && level <= (*l).log_level {
            let fd = (*(*l).file).fd;
            ngx_wsgi::log_text::write_all(fd, entry.as_bytes());
            wrote_stderr |= fd == libc::STDERR_FILENO;
            l = (*l).next;
        }
        // What nginx does with an entry of its own: while it starts or checks a configuration
        // (`nginx -t`), a warning or worse is also said on the terminal (a long import
        // traceback included), unless the log is the terminal already.
        if nginx_sys::ngx_use_stderr != 0 && level <= NGX_LOG_WARN as usize && !wrote_stderr {
            let said = format!(
                "nginx: [{}] {msg}\n",
                LEVELS.get(level).copied().unwrap_or("error")
            );
            ngx_wsgi::log_text::write_all(libc::STDERR_FILENO, said.as_bytes());
        }
    }
}

/// Now, in the form of nginx's error-log time (`2026/12/03 04:23:08`, local time).
fn local_time_now() -> String {
    // SAFETY: `time` and `localtime_r` write only into the locals passed to them.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
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
        let log = routed_log();
        // SAFETY: a log of the cycle or of its configuration; only the level is read (the
        // first of a log chain is its most verbose).
        !log.is_null() && ngx_level(level) <= unsafe { (*log).log_level }
    }

    fn write(&self, level: &Level, text: &str) {
        write_log(ngx_level(level), routed_log(), text);
    }

    fn write_final(&self, level: &Level, text: &str) {
        let log = routed_log();
        if !log.is_null() {
            write_entry(ngx_level(level), log, text, Deferral::Never);
        }
    }
}

/// Installs the nginx log as the process's `tracing` subscriber (once; workers inherit it).
pub(crate) fn install() {
    ngx_wsgi::server_log::install(NginxLog);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_levels_map_to_nginx_levels() {
        assert_eq!(ngx_level(&Level::ERROR), NGX_LOG_ERR as usize);
        assert_eq!(ngx_level(&Level::WARN), NGX_LOG_WARN as usize);
        assert_eq!(ngx_level(&Level::INFO), NGX_LOG_INFO as usize);
        assert_eq!(ngx_level(&Level::TRACE), NGX_LOG_DEBUG as usize);
        assert_eq!(LEVELS[NGX_LOG_ERR as usize], "error");
        assert_eq!(LEVELS[NGX_LOG_DEBUG as usize], "debug");
    }

    #[test]
    fn own_time_has_nginx_error_log_form() {
        let t = local_time_now();
        let shape: String = t
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999/99/99 99:99:99", "{t}");
    }
}
