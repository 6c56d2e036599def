//! ASGI settings: `asgi_event_loop` (which asyncio event loop runs a worker's ASGI apps) and,
//! per location, the keepalive of open WebSockets (`asgi_websocket_ping_interval`,
//! `asgi_websocket_idle_timeout`), their compression (`asgi_websocket_compression`) and close
//! code at a worker's exit (`asgi_websocket_exit_code`), and whether HTTP scopes offer
//! `http.response.pathsend` (`asgi_pathsend`).

use std::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_flag_t, ngx_msec_t};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx_wsgi::asgi::LoopKind;

use super::limits::UNSET_MSEC;
use super::streaming::UNSET_FLAG;
use super::{args, conf_error, merge_value, MainConf};
use crate::ffi::{guard, ngx_bytes};

/// ASGI settings of the `http` block.
#[derive(Default)]
pub(crate) struct AsgiConf {
    pub event_loop: Option<LoopKind>,
}

impl AsgiConf {
    pub(crate) fn event_loop(&self) -> LoopKind {
        self.event_loop.unwrap_or_default()
    }
}

/// Default `asgi_websocket_ping_interval`: under the idle timeouts of the NATs, load balancers
/// and proxies between a browser and the server (60 s is common: nginx's own
/// `proxy_read_timeout`, cloud load balancers), at the cost of one 2-byte frame each way per
/// socket every 30 s.
pub(crate) const DEFAULT_PING_INTERVAL_MS: ngx_msec_t = 30_000;
/// Default `asgi_websocket_idle_timeout`: two ping intervals, so a live client (whose pongs
/// count) is never closed, and a dead one is noticed within a minute.
pub(crate) const DEFAULT_IDLE_TIMEOUT_MS: ngx_msec_t = 60_000;

/// A location's HTTP side: `asgi_pathsend`, whether scopes offer `http.response.pathsend`.
#[derive(Clone)]
pub(crate) struct AsgiHttpConf {
    pub pathsend: ngx_flag_t,
}

impl Default for AsgiHttpConf {
    fn default() -> Self {
        AsgiHttpConf {
            pathsend: UNSET_FLAG,
        }
    }
}

impl AsgiHttpConf {
    /// Off unless turned on, at this level or one around it: a middleware that passes on only
    /// `http.response.body` (Gradio's) loses a file response sent with the extension, and
    /// uvicorn, which apps are written against, offers none.
    pub(crate) fn merge(&mut self, parent: &AsgiHttpConf) {
        merge_value(&mut self.pathsend, parent.pathsend, UNSET_FLAG, 0);
    }
}

/// A location's open WebSockets: their keepalive, in ms (0: off), and their compression.
#[derive(Clone)]
pub(crate) struct WebSocketConf {
    /// `asgi_websocket_ping_interval`: the server pings the client this often.
    pub ping_interval: ngx_msec_t,
    /// `asgi_websocket_idle_timeout`: a client that sends nothing for this long is closed.
    pub idle_timeout: ngx_msec_t,
    /// `asgi_websocket_compression`: `permessage-deflate` when the client offers it.
    pub compression: ngx_flag_t,
    /// `asgi_websocket_exit_code`: the close code an open socket gets at the worker's exit.
    pub exit_code: u16,
}

impl Default for WebSocketConf {
    fn default() -> Self {
        WebSocketConf {
            ping_interval: UNSET_MSEC,
            idle_timeout: UNSET_MSEC,
            compression: UNSET_FLAG,
            exit_code: UNSET_EXIT_CODE,
        }
    }
}

const UNSET_EXIT_CODE: u16 = 0;
/// RFC 6455's "going away": a server going down.
pub(crate) const GOING_AWAY: u16 = 1001;
/// IANA's "service restart": the client may reconnect (what uvicorn sends at its shutdown).
pub(crate) const SERVICE_RESTART: u16 = 1012;

impl WebSocketConf {
    /// As nginx merges its own timeouts: the location's, else the level around it, else the
    /// default.
    pub(crate) fn merge(&mut self, parent: &WebSocketConf) {
        merge_value(
            &mut self.ping_interval,
            parent.ping_interval,
            UNSET_MSEC,
            DEFAULT_PING_INTERVAL_MS,
        );
        merge_value(
            &mut self.idle_timeout,
            parent.idle_timeout,
            UNSET_MSEC,
            DEFAULT_IDLE_TIMEOUT_MS,
        );
        // On unless turned off: no socket keeps a zlib context (see ws_deflate).
        merge_value(&mut self.compression, parent.compression, UNSET_FLAG, 1);
        merge_value(
            &mut self.exit_code,
            parent.exit_code,
            UNSET_EXIT_CODE,
            GOING_AWAY,
        );
    }
}

/// `asgi_websocket_exit_code 1001|1012;`: 1001 by default; 1012 for clients that reconnect only
/// after a close they take for an error (Python's `websockets` raises `ConnectionClosedOK` for
/// 1000 and 1001, and a client that reconnects only on `ConnectionClosedError` stops there).
pub(crate) unsafe extern "C" fn set_websocket_exit_code(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("asgi_websocket_exit_code", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration.
        let websocket = unsafe { &mut (*(conf as *mut super::LocConf)).websocket };
        if websocket.exit_code != UNSET_EXIT_CODE {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: one argument, live during the callback.
        let value = ngx_bytes(unsafe { &args(cf)[1] });
        match exit_code(value) {
            Some(code) => {
                websocket.exit_code = code;
                NGX_CONF_OK
            }
            None => conf_error(
                cf,
                &format!(
                    "asgi_websocket_exit_code \"{}\": expected 1001 (going away) or 1012 \
                     (service restart)",
                    String::from_utf8_lossy(value)
                ),
            ),
        }
    })
}

fn exit_code(value: &[u8]) -> Option<u16> {
    match value {
        b"1001" => Some(GOING_AWAY),
        b"1012" => Some(SERVICE_RESTART),
        _ => None,
    }
}

fn parse(value: &[u8]) -> Option<LoopKind> {
    match value {
        b"asyncio" => Some(LoopKind::Asyncio),
        b"uvloop" => Some(LoopKind::Uvloop),
        _ => None,
    }
}

pub(crate) unsafe extern "C" fn set_event_loop(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("asgi_event_loop", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's main configuration.
        let asgi = unsafe { &mut (*(conf as *mut MainConf)).asgi };
        if asgi.event_loop.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: one argument, live during the callback.
        let value = ngx_bytes(unsafe { &args(cf)[1] });
        match parse(value) {
            Some(kind) => {
                asgi.event_loop = Some(kind);
                NGX_CONF_OK
            }
            None => conf_error(
                cf,
                &format!(
                    "asgi_event_loop \"{}\": expected asyncio or uvloop",
                    String::from_utf8_lossy(value)
                ),
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_names() {
        assert_eq!(parse(b"asyncio"), Some(LoopKind::Asyncio));
        assert_eq!(parse(b"uvloop"), Some(LoopKind::Uvloop));
        assert_eq!(parse(b"trio"), None);
        assert_eq!(AsgiConf::default().event_loop(), LoopKind::Asyncio);
    }

    #[test]
    fn websocket_timers_merge_like_nginx_timeouts() {
        let mut http = WebSocketConf::default();
        http.merge(&WebSocketConf::default());
        assert_eq!(
            (http.ping_interval, http.idle_timeout),
            (DEFAULT_PING_INTERVAL_MS, DEFAULT_IDLE_TIMEOUT_MS)
        );
        let mut server = WebSocketConf {
            ping_interval: 0,
            ..Default::default()
        };
        server.merge(&http);
        let mut location = WebSocketConf {
            idle_timeout: 5000,
            ..Default::default()
        };
        location.merge(&server);
        assert_eq!((location.ping_interval, location.idle_timeout), (0, 5000));
        assert_eq!(http.compression, 1, "on by default");
        let mut off = WebSocketConf {
            compression: 0,
            ..Default::default()
        };
        off.merge(&http);
        let mut inner = WebSocketConf::default();
        inner.merge(&off);
        assert_eq!(inner.compression, 0, "inherited");
    }

    #[test]
    fn the_exit_code_is_1001_unless_1012_is_asked_for() {
        let mut http = WebSocketConf::default();
        http.merge(&WebSocketConf::default());
        assert_eq!(http.exit_code, GOING_AWAY);
        let mut server = WebSocketConf {
            exit_code: SERVICE_RESTART,
            ..Default::default()
        };
        server.merge(&http);
        let mut location = WebSocketConf::default();
        location.merge(&server);
        assert_eq!(location.exit_code, SERVICE_RESTART, "inherited");
        assert_eq!(exit_code(b"1001"), Some(1001));
        assert_eq!(exit_code(b"1012"), Some(1012));
        for bad in [&b"1000"[..], b"4000", b"", b"1012 "] {
            assert_eq!(exit_code(bad), None);
        }
    }
}
