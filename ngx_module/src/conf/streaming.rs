//! Where Python runs and how bytes flow: `wsgi_thread_pool`, `wsgi_stream_buffer`,
//! `wsgi_request_buffering`.

use std::ffi::{c_char, c_void};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_flag_t, ngx_str_t, ngx_thread_pool_add, ngx_thread_pool_t,
};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};

use super::{args, merge_value, LocConf};
use crate::ffi::guard;

/// Default `wsgi_stream_buffer`.
pub(crate) const DEFAULT_STREAM_BUFFER: usize = 256 * 1024;
/// NGX_CONF_UNSET_SIZE, as `ngx_conf_set_size_slot` expects.
const UNSET_SIZE: usize = usize::MAX;
/// NGX_CONF_UNSET, as `ngx_conf_set_flag_slot` expects.
pub(super) const UNSET_FLAG: ngx_flag_t = -1;

#[derive(Clone)]
pub(crate) struct Streaming {
    /// `wsgi_thread_pool`, inherited down to locations.
    pub thread_pool_name: ngx_str_t,
    /// The resolved nginx pool, for locations that serve an app with `wsgi_thread_pool`
    /// (NULL: the module's own threads).
    pub thread_pool: *mut ngx_thread_pool_t,
    /// `wsgi_stream_buffer`: how many bytes of a streamed response (or of an unbuffered request
    /// body) may wait before the producer is paused.
    pub stream_buffer: usize,
    /// `wsgi_request_buffering`: read the whole body before the app runs (1), or give it to the
    /// app as it arrives (0).
    pub request_buffering: ngx_flag_t,
}

impl Default for Streaming {
    fn default() -> Self {
        Streaming {
            thread_pool_name: ngx_str_t::empty(),
            thread_pool: std::ptr::null_mut(),
            stream_buffer: UNSET_SIZE,
            request_buffering: UNSET_FLAG,
        }
    }
}

impl Streaming {
    pub(crate) fn merge(&mut self, parent: &Streaming) {
        if self.thread_pool_name.data.is_null() {
            self.thread_pool_name = parent.thread_pool_name;
        }
        merge_value(
            &mut self.request_buffering,
            parent.request_buffering,
            UNSET_FLAG,
            1,
        );
        merge_value(
            &mut self.stream_buffer,
            parent.stream_buffer,
            UNSET_SIZE,
            DEFAULT_STREAM_BUFFER,
        );
    }

    /// Finds the nginx thread pool named by `wsgi_thread_pool` (set) for a location that serves
    /// an app (nginx creates a pool named "default" when no `thread_pool` directive defines it;
    /// any other name must be defined).
    ///
    /// # Safety
    /// `cf` is the live configuration being merged.
    pub(crate) unsafe fn resolve_pool(&mut self, cf: *mut ngx_conf_t) -> Result<(), ()> {
        // SAFETY: `cf` is live; the name's bytes live in the cycle's pool as long as the pool
        // entry does.
        self.thread_pool = unsafe { ngx_thread_pool_add(cf, &mut self.thread_pool_name) };
        if self.thread_pool.is_null() {
            Err(())
        } else {
            Ok(())
        }
    }
}

pub(crate) unsafe extern "C" fn set_thread_pool(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_thread_pool", NGX_CONF_ERROR, || {
        // SAFETY: `conf` is this module's location configuration.
        let lc = unsafe { &mut *(conf as *mut LocConf) };
        if !lc.streaming.thread_pool_name.data.is_null() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        // SAFETY: one argument; its bytes live in the cycle's pool.
        lc.streaming.thread_pool_name = unsafe { args(cf)[1] };
        NGX_CONF_OK
    })
}

/// `wsgi_stream_buffer SIZE`: nginx's size syntax, at least one byte (with none, every
/// response's first piece, every ASGI `send()` and every read of an unbuffered body would wait
/// for room that never comes).
pub(crate) unsafe extern "C" fn set_stream_buffer(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    guard("wsgi_stream_buffer", NGX_CONF_ERROR, || {
        // SAFETY: nginx's own parser for the slot this directive names (`cmd`'s offset into
        // this module's location configuration, `conf`).
        let rv = unsafe { nginx_sys::ngx_conf_set_size_slot(cf, cmd, conf) };
        if !rv.is_null() {
            return rv;
        }
        // SAFETY: `conf` is this module's location configuration.
        let lc = unsafe { &*(conf as *const LocConf) };
        if lc.streaming.stream_buffer == 0 {
            return c"must be at least 1".as_ptr().cast_mut();
        }
        NGX_CONF_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_inheritance() {
        let mut top = Streaming::default();
        top.merge(&Streaming::default());
        assert_eq!(top.stream_buffer, DEFAULT_STREAM_BUFFER);
        assert_eq!(top.request_buffering, 1);
        assert!(top.thread_pool_name.data.is_null());

        let name = *b"api";
        let parent = Streaming {
            thread_pool_name: ngx_str_t {
                len: name.len(),
                data: name.as_ptr().cast_mut(),
            },
            stream_buffer: 4096,
            request_buffering: 0,
            ..Default::default()
        };
        let mut child = Streaming::default();
        child.merge(&parent);
        assert_eq!(child.stream_buffer, 4096);
        assert_eq!(child.request_buffering, 0);
        assert_eq!(crate::ffi::ngx_bytes(&child.thread_pool_name), b"api");

        let mut own = Streaming {
            stream_buffer: 1,
            request_buffering: 1,
            ..Default::default()
        };
        own.merge(&parent);
        assert_eq!((own.stream_buffer, own.request_buffering), (1, 1));
    }
}
