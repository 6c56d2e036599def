//! Streaming: how the response of an app that yields its body piece by piece reaches the server
//! while the app is still running.

use crate::chunk::Chunk;
use crate::head::ResponseHead;

/// The client went away; the app's iterator must not be advanced any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientGone;

/// The server's side of a streamed response.
pub trait ChunkSink: Send + Sync {
    /// Hands one piece of the body to the server, with the response head before the first.
    /// Called without the GIL; blocks while the server already holds its bound of unsent bytes
    /// for this request (backpressure). Fails once the client is gone.
    fn push(&self, head: Option<ResponseHead>, data: Chunk) -> Result<(), ClientGone>;

    /// The server ended the response itself, cleanly (an event stream at worker exit): a push
    /// that failed after it is no client's doing.
    fn ended_by_server(&self) -> bool {
        false
    }

    /// The body is whole (the app's iterable is exhausted, or the head's length is reached):
    /// the server may end the response now, before the iterable's `close()` runs. True when it
    /// does: nothing may be pushed after it. A server that does not (false) ends the response
    /// with the outcome.
    fn body_complete(&self) -> bool {
        false
    }

    /// The head of a streamed response whose app has produced no body byte yet (its first
    /// piece is awaited). Not to be sent: PEP 3333 holds the head until the first body byte,
    /// and the app may still replace it (`start_response` with `exc_info`; called again then).
    /// A server may end an event stream with it at its exit.
    fn head_known(&self, _head: &ResponseHead) {}
}
