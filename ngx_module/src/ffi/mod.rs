//! The bottom layer: what every other file needs to talk to nginx safely (the module's handle,
//! nginx strings and pools, timers, the panic guard, the error log, loop-only state). Nothing here
//! knows about requests or configuration.

pub(crate) mod event_flags;
pub(crate) mod guard;
pub(crate) mod log;
pub(crate) mod loop_cell;
pub(crate) mod module;
pub(crate) mod pool;
pub(crate) mod timer;

#[cfg(test)]
mod test_stubs;

pub(crate) use guard::guard;
pub(crate) use module::{module, ngx_bytes, LoopRequest, WsgiModule};
