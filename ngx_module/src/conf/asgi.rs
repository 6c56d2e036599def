//! `asgi_event_loop`: which asyncio event loop runs a worker's ASGI apps.

use std::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx_wsgi::asgi::LoopKind;

use super::{args, conf_error, MainConf};
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
}
