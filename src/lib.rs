//! The server-agnostic core of ngx-wsgi: an embedded CPython interpreter that runs PEP 3333 WSGI
//! applications for a web server adapter (nginx, Apache).
//!
//! An adapter copies what a request needs into a [`RequestInfo`] and a [`Body`] on its own thread,
//! hands both to [`run_request`] on a thread that may run Python, and sends the [`Outcome`] back
//! out through the server. Nothing here knows a server's types.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod accel;
pub mod app;
mod app_exit;
mod arena;
pub mod asgi;
pub mod asgi_version;
mod blocking_wait;
pub mod body;
pub mod body_bytes;
pub mod body_lease;
pub mod check;
pub mod child_signal_mask;
pub mod chunk;
pub mod connection_reset;
pub mod content_length;
mod embedded_module;
pub mod environ;
pub mod errors;
pub mod file_wrapper;
pub mod forked;
pub mod head;
pub mod heap;
pub mod input;
pub mod intercepted;
pub mod interpreter;
pub mod log_text;
pub mod logging_bridge;
pub mod metrics;
pub mod monotonic;
pub mod process_alive;
mod python_module;
pub mod recycle;
pub mod request;
pub mod response;
pub mod server_log;
pub mod signals;
pub mod sink;
pub mod spawn_gate;
mod std_streams;
pub mod timeout_exit;
pub mod traceback;
pub mod watchdog;

pub use app::{AppKind, AppSpec, Apps};
pub use body::{Body, Segment};
pub use chunk::Chunk;
pub use environ::{RequestInfo, RequestInfoBuilder};
pub use input::{BodySource, RequestBody};
pub use interpreter::PythonSettings;
pub use request::{run_request, Outcome, OutcomeKind};
pub use response::ResponseHead;
pub use sink::{ChunkSink, ClientGone};
pub use watchdog::{LogScope, RequestWatch};

#[cfg(test)]
pub(crate) mod testing;
