//! ASGI 3.0: apps served from one asyncio event loop per server process.
//!
//! The server copies what a connection needs into a [`scope::HttpScope`] on its own thread and
//! submits it to the process's [`event_loop::AsgiLoop`]; the app runs there as an asyncio task.
//! Its messages are checked here ([`http`]) and handed to the server through [`http::HttpServer`]
//! without the loop ever waiting on the server: where the server has no room (or no body yet), the
//! app's `send`/`receive` awaits a [`waker::Waker`] that the server fires from its own thread.

pub mod event_loop;
pub mod held_wakes;
pub mod http;
pub mod message_values;
pub mod scope;
pub mod task_watch;
pub mod waker;
pub mod websocket;
pub mod ws_codec;
pub mod ws_deflate;
pub mod ws_handshake;

pub use event_loop::{AsgiLoop, LoopKind};
pub use http::{BodyRead, HttpEnd, HttpRequest, HttpServer};
pub use scope::HttpScope;
pub use task_watch::TaskWatch;
pub use waker::Waker;
pub use websocket::{WsRequest, WsServer};
pub use ws_codec::{WsCodec, WsIncoming, WsOutgoing};
