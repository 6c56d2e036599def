//! Limits and timeouts: `wsgi_read_timeout` (per location); per worker, recycling
//! (`wsgi_max_requests`, `wsgi_max_rss`), the module's own threads and their queue
//! (`wsgi_max_threads`, `wsgi_max_queue`, `wsgi_queue_timeout`), and how long an exiting worker
//! waits for the app's own threads (`wsgi_shutdown_timeout`).

use std::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_flag_t, ngx_int_t, ngx_msec_t};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use super::{args, conf_error, merge_value, MainConf};
use crate::ffi::{guard, ngx_bytes};

/// NGX_CONF_UNSET_MSEC, as `ngx_conf_set_msec_slot` expects.
pub(crate) const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
/// NGX_CONF_UNSET_SIZE, as `ngx_conf_set_size_slot` expects.
const UNSET_SIZE: usize = usize::MAX;
/// NGX_CONF_UNSET, as `ngx_conf_set_num_slot` expects.
const UNSET_NUM: ngx_int_t = -1;

/// Default `wsgi_max_threads`: room for a thousand long-lived responses (server-sent events,
/// long polls) in one worker besides its short requests. Threads are made only when requests
/// block, so a CPU-bound app never gets near it.
pub(crate) const DEFAULT_MAX_THREADS: usize = 1024;
/// Default `wsgi_max_queue`.
pub(crate) const DEFAULT_MAX_QUEUE: usize = 1024;
/// Default `wsgi_max_queue` of ASGI requests waiting for the event loop to start them.
pub(crate) const DEFAULT_ASGI_MAX_QUEUE: usize = 8192;
/// Default `wsgi_queue_timeout`.
pub(crate) const DEFAULT_QUEUE_TIMEOUT_MS: ngx_msec_t = 10_000;
/// Default `wsgi_shutdown_timeout`.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT_MS: ngx_msec_t =
    ngx_wsgi::interpreter::DEFAULT_SHUTDOWN_TIMEOUT.as_millis() as ngx_msec_t;

/// Per-location limits.
#[derive(Clone)]
pub(crate) struct LocationLimits {
    /// `wsgi_read_timeout` in ms (0: none).
    pub read_timeout: ngx_msec_t,
}

impl Default for LocationLimits {
    fn default() -> Self {
        LocationLimits {
            read_timeout: UNSET_MSEC,
        }
    }
}

impl LocationLimits {
    pub(crate) fn merge(&mut self, parent: &LocationLimits) {
        merge_value(&mut self.read_timeout, parent.read_timeout, UNSET_MSEC, 0);
    }
}

/// Per-worker limits (`http` level). Fields are nginx's "unset" until a directive sets them;
/// the methods give the values in effect.
pub(crate) struct WorkerLimits {
    /// `wsgi_max_requests N [jitter=M]` (0: no limit).
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// `wsgi_max_rss SIZE`.
    pub max_rss: usize,
    /// `wsgi_max_threads N`.
    pub max_threads: ngx_int_t,
    /// `wsgi_max_queue N`.
    pub max_queue: ngx_int_t,
    /// `wsgi_queue_timeout TIME`.
    pub queue_timeout: ngx_msec_t,
    /// `wsgi_shutdown_timeout TIME`.
    pub shutdown_timeout: ngx_msec_t,
    /// `wsgi_event_stream_grace TIME`.
    pub event_stream_grace: ngx_msec_t,
    /// `wsgi_reload_handover on|off`.
    pub reload_handover: ngx_flag_t,
    /// `wsgi_busy_handoff on|off`.
    pub busy_handoff: ngx_flag_t,
    /// `wsgi_sticky_clients on|off`.
    pub sticky_clients: ngx_flag_t,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss: UNSET_SIZE,
            max_threads: UNSET_NUM,
            max_queue: UNSET_NUM,
            queue_timeout: UNSET_MSEC,
            shutdown_timeout: UNSET_MSEC,
            event_stream_grace: UNSET_MSEC,
            reload_handover: super::streaming::UNSET_FLAG,
            busy_handoff: super::streaming::UNSET_FLAG,
            sticky_clients: super::streaming::UNSET_FLAG,
        }
    }
}

fn num_or(value: ngx_int_t, default: usize) -> usize {
    if value == UNSET_NUM {
        default
    } else {
        value.max(0) as usize
    }
}

fn msec_or(value: ngx_msec_t, default: ngx_msec_t) -> ngx_msec_t {
    if value == UNSET_MSEC {
        default
    } else {
        value
    }
}

impl WorkerLimits {
    pub(crate) fn max_threads(&self) -> usize {
        num_or(self.max_threads, DEFAULT_MAX_THREADS)
    }

    pub(crate) fn max_queue(&self) -> usize {
        num_or(self.max_queue, DEFAULT_MAX_QUEUE)
    }

    /// The bound on ASGI requests waiting for the event loop to start them: `wsgi_max_queue`
    /// when it is set, else a larger default than the threads' queue. A loop that starts
    /// requests more slowly than a burst brings them is behind, not stuck, and
    /// `wsgi_queue_timeout` finds a stuck one; the count still bounds what a stuck loop holds
    /// (WebSocket handshakes, which the timeout does not watch; HTTP/2 streams, which no
    /// `worker_connections` slot bounds).
    pub(crate) fn asgi_max_queue(&self) -> usize {
        num_or(self.max_queue, DEFAULT_ASGI_MAX_QUEUE)
    }

    pub(crate) fn queue_timeout(&self) -> ngx_msec_t {
        msec_or(self.queue_timeout, DEFAULT_QUEUE_TIMEOUT_MS)
    }

    pub(crate) fn shutdown_timeout(&self) -> ngx_msec_t {
        msec_or(self.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT_MS)
    }

    /// Whether a reload's old workers go on accepting until the new ones are ready (off unless
    /// turned on: until then, new requests would get the old configuration and the old code).
    pub(crate) fn reload_handover(&self) -> bool {
        self.reload_handover == 1
    }

    /// Whether a worker busy in Python leaves its new connections to an idle one (on unless
    /// turned off).
    pub(crate) fn busy_handoff(&self) -> bool {
        self.busy_handoff != 0
    }

    /// Whether each client address goes to one worker (`sticky_clients.rs`; off unless turned
    /// on: it needs `reuseport`, and clients behind one address share one worker).
    pub(crate) fn sticky_clients(&self) -> bool {
        self.sticky_clients == 1
    }

    /// How long an exiting worker lets its event streams go on before it ends them, given
    /// `bound`, how long it waits for its requests at all: the written value (never past the
    /// bound's last second), else half the bound. A stream that ends by itself meanwhile (an
    /// answer streamed token by token, a job's progress) loses nothing; one that does not is
    /// ended cleanly (its EventSource client reconnects) rather than cut, with the other half
    /// left for its app to come back from waiting for its next event.
    pub(crate) fn event_stream_grace(&self, bound: ngx_msec_t) -> ngx_msec_t {
        msec_or(self.event_stream_grace, bound / 2).min(bound.saturating_sub(1000))
    }

    /// `wsgi_max_rss` in bytes, 0 for none.
    pub(crate) fn max_rss_bytes(&self) -> usize {
        if self.max_rss == UNSET_SIZE {
            0
        } else {
            self.max_rss
        }
    }
}

/// `wsgi_max_requests N [jitter=M]`, as (N, M).
fn parse_max_requests(count: &[u8], jitter: Option<&[u8]>) -> Result<(u64, u64), String> {
    let number = |text: &[u8]| std::str::from_utf8(text).ok()?.parse::<u64>().ok();
    let n = match number(count) {
        Some(n) if n > 0 => n,
        _ => return Err("wsgi_max_requests needs a number of requests above 0".into()),
    };
    let j = match jitter {
        None => 0,
        Some(text) => text
            .strip_prefix(b"jitter=")
            .and_then(number)
            .ok_or_else(|| {
                format!(
                    "wsgi_max_requests: invalid parameter \"{}\" (expected jitter=NUMBER)",
                    String::from_utf8_lossy(text)
                )
            })?,
    };
    Ok((n, j))
}

/// A count above 0 for the `ngx_int_t` at the command's offset (`wsgi_max_threads`,
/// `wsgi_max_queue`).
fn parse_count(directive: &str, text: &[u8]) -> Result<ngx_int_t, String> {
    match std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<ngx_int_t>().ok())
    {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{directive} needs a whole number above 0, not \"{}\"",
            String::from_utf8_lossy(text)
        )),
    }
}

pub(crate) unsafe extern "C" fn set_count(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("a wsgi count", NGX_CONF_ERROR, || {
        // SAFETY: `cmd` is this directive's entry, whose offset points at an ngx_int_t inside
        // the configuration `conf`; the arguments are live during the callback.
        unsafe {
            let field = conf.cast::<u8>().add((*cmd).offset).cast::<ngx_int_t>();
            let name = String::from_utf8_lossy(ngx_bytes(&(*cmd).name)).into_owned();
            if *field != UNSET_NUM {
                return c"is duplicate".as_ptr().cast_mut();
            }
            match parse_count(&name, ngx_bytes(&args(cf)[1])) {
                Ok(n) => {
                    *field = n;
                    NGX_CONF_OK
                }
                Err(e) => conf_error(cf, &e),
            }
        }
    })
}

pub(crate) unsafe extern "C" fn set_max_requests(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_max_requests", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration; the arguments are live.
        let (mc, args) = unsafe { (&mut *(conf as *mut MainConf), args(cf)) };
        if mc.limits.max_requests != 0 {
            return c"is duplicate".as_ptr().cast_mut();
        }
        match parse_max_requests(ngx_bytes(&args[1]), args.get(2).map(ngx_bytes)) {
            Ok((n, j)) => {
                mc.limits.max_requests = n;
                mc.limits.max_requests_jitter = j;
                NGX_CONF_OK
            }
            Err(e) => conf_error(cf, &e),
        }
    })
}

/// `wsgi_max_rss SIZE`: bytes, or with a `k`, `m` or `g` unit, as Apache's `NgxWsgiMaxRSS`
/// (nginx's own size parser has no `g`, and a limit on a worker's memory is often gigabytes);
/// `0` is no limit.
pub(crate) unsafe extern "C" fn set_max_rss(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_max_rss", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration; the arguments are live.
        let (mc, args) = unsafe { (&mut *(conf as *mut MainConf), args(cf)) };
        if mc.limits.max_rss != UNSET_SIZE {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let text = String::from_utf8_lossy(ngx_bytes(&args[1])).into_owned();
        match ngx_wsgi::recycle::parse_memory_size(&text) {
            Some(bytes) if bytes != UNSET_SIZE => {
                mc.limits.max_rss = bytes;
                NGX_CONF_OK
            }
            _ => conf_error(
                cf,
                &format!(
                    "wsgi_max_rss: invalid value \"{text}\" (bytes, or with a unit: 512k, 48m, 2g)"
                ),
            ),
        }
    })
}

/// A time in nginx's syntax, more than 0, for the `ngx_msec_t` at the command's offset:
/// `wsgi_queue_timeout` (with 0 every request that finds the threads busy, or the event loop a
/// turn behind, would be refused at once), `wsgi_check_timeout` (the check would fail before
/// Python started).
pub(crate) unsafe extern "C" fn set_msec_above_zero(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("a time directive", NGX_CONF_ERROR, || {
        // SAFETY: nginx's own parser for the slot this directive names (`cmd`'s offset into
        // this module's main configuration, `conf`).
        let rv = unsafe { nginx_sys::ngx_conf_set_msec_slot(cf, cmd, conf) };
        if !rv.is_null() {
            return rv;
        }
        // SAFETY: the slot nginx's parser just wrote, at the command's offset.
        let value = unsafe { *((conf as *const u8).add((*cmd).offset) as *const ngx_msec_t) };
        if value == 0 {
            return c"must be more than 0".as_ptr().cast_mut();
        }
        NGX_CONF_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_requests_with_and_without_jitter() {
        assert_eq!(parse_max_requests(b"1000", None), Ok((1000, 0)));
        assert_eq!(parse_max_requests(b"10", Some(b"jitter=5")), Ok((10, 5)));
        assert!(parse_max_requests(b"0", None)
            .unwrap_err()
            .contains("above 0"));
        assert!(parse_max_requests(b"-1", None).is_err());
        assert!(parse_max_requests(b"10", Some(b"spread=5"))
            .unwrap_err()
            .contains("expected jitter=NUMBER"));
    }

    #[test]
    fn read_timeout_inherits_and_defaults_to_none() {
        let mut unset = LocationLimits::default();
        unset.merge(&LocationLimits::default());
        assert_eq!(unset.read_timeout, 0);
        let parent = LocationLimits { read_timeout: 5000 };
        let mut child = LocationLimits::default();
        child.merge(&parent);
        assert_eq!(child.read_timeout, 5000);
        let mut own = LocationLimits { read_timeout: 10 };
        own.merge(&parent);
        assert_eq!(own.read_timeout, 10);
    }

    #[test]
    fn counts_are_whole_numbers_above_zero() {
        assert_eq!(parse_count("wsgi_max_threads", b"64"), Ok(64));
        for bad in [&b"0"[..], b"-3", b"lots", b"", b"1.5"] {
            let e = parse_count("wsgi_max_threads", bad).unwrap_err();
            assert!(
                e.starts_with("wsgi_max_threads needs a whole number above 0"),
                "{e}"
            );
        }
    }

    #[test]
    fn unset_worker_limits_take_their_defaults() {
        let unset = WorkerLimits::default();
        assert_eq!(unset.max_threads(), DEFAULT_MAX_THREADS);
        assert_eq!(unset.max_queue(), DEFAULT_MAX_QUEUE);
        assert_eq!(unset.asgi_max_queue(), DEFAULT_ASGI_MAX_QUEUE);
        assert_eq!(unset.queue_timeout(), DEFAULT_QUEUE_TIMEOUT_MS);
        assert_eq!(unset.shutdown_timeout(), DEFAULT_SHUTDOWN_TIMEOUT_MS);
        let set = WorkerLimits {
            max_threads: 8,
            max_queue: 0,
            queue_timeout: 0,
            shutdown_timeout: 250,
            ..Default::default()
        };
        assert_eq!(
            (
                set.max_threads(),
                set.max_queue(),
                set.asgi_max_queue(),
                set.queue_timeout(),
                set.shutdown_timeout()
            ),
            (8, 0, 0, 0, 250)
        );
    }

    #[test]
    fn event_streams_get_half_the_exit_unless_told_otherwise() {
        let unset = WorkerLimits::default();
        assert_eq!(unset.event_stream_grace(60_000), 30_000);
        assert_eq!(unset.event_stream_grace(500), 0);
        let set = WorkerLimits {
            event_stream_grace: 5000,
            ..Default::default()
        };
        assert_eq!(set.event_stream_grace(60_000), 5000);
        assert_eq!(
            set.event_stream_grace(3000),
            2000,
            "never past the exit's own bound"
        );
        let none = WorkerLimits {
            event_stream_grace: 0,
            ..Default::default()
        };
        assert_eq!(none.event_stream_grace(60_000), 0);
    }

    #[test]
    fn max_rss_unset_is_no_limit() {
        assert_eq!(WorkerLimits::default().max_rss_bytes(), 0);
        let limits = WorkerLimits {
            max_rss: 1 << 20,
            ..Default::default()
        };
        assert_eq!(limits.max_rss_bytes(), 1 << 20);
    }
}
