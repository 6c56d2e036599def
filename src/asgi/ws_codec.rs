//! WebSocket frames (RFC 6455) over byte buffers: tungstenite's protocol (fragmentation, control
//! frames, pings answered with pongs, the close handshake, UTF-8 checks, size limits) with the
//! I/O left to the server, which feeds the bytes it read and writes the bytes it is given.

use std::io::{self, Read, Write};

use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use super::ws_deflate::{self, Deflate, Inbound};

/// What the client sent, as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsIncoming {
    Text(String),
    Binary(Vec<u8>),
    /// The connection is over: the client's close code (1005 without one, 1006 when it went
    /// away without closing), or ours when its frames broke the protocol.
    Closed {
        code: u16,
        reason: String,
    },
}

/// What one message waiting for the app holds in memory, an empty one included (a flood of
/// empty frames must count against the server's bound too).
const MESSAGE_OVERHEAD: usize = 64;

impl WsIncoming {
    /// The bytes this message holds while it waits for the app, payload and bookkeeping.
    pub fn cost(&self) -> usize {
        MESSAGE_OVERHEAD
            + match self {
                WsIncoming::Text(t) => t.capacity(),
                WsIncoming::Binary(b) => b.capacity(),
                WsIncoming::Closed { reason, .. } => reason.capacity(),
            }
    }
}

/// A message the app sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOutgoing {
    Text(String),
    Binary(Vec<u8>),
    Close { code: u16, reason: String },
}

/// The longest close reason: a close frame's payload (code and reason) is a control frame's,
/// at most 125 bytes (RFC 6455 5.5).
pub const MAX_CLOSE_REASON: usize = 123;

/// Whether an endpoint may send `code` in a close frame (RFC 6455 7.4): 1000-1003 and 1007-1014
/// (IANA's registry), 3000-4999 (libraries and applications); 1004-1006 and 1015 are reserved or
/// only reported locally.
pub fn close_code_may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Whether a close with `code` and `reason` may go on the wire: a code that may be sent, a
/// reason that fits a control frame.
pub fn check_close(code: u16, reason: &str) -> Result<(), String> {
    if !close_code_may_be_sent(code) {
        return Err(format!(
            "close code {code} may not be sent (RFC 6455 7.4: 1000-1003, 1007-1014 or 3000-4999)"
        ));
    }
    if reason.len() > MAX_CLOSE_REASON {
        return Err(format!(
            "a close reason is at most {MAX_CLOSE_REASON} bytes of UTF-8, not {}",
            reason.len()
        ));
    }
    Ok(())
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[derive(Default)]
struct Pipe {
    input: Vec<u8>,
    pos: usize,
    /// The client closed its side (TCP).
    eof: bool,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = &self.input[self.pos..];
        if left.is_empty() {
            if self.eof {
                return Ok(0);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = left.len().min(buf.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.pos += n;
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One connection's frames, on the server's side.
pub struct WsCodec {
    ctx: WebSocketContext,
    pipe: Pipe,
    /// The close handshake is over (or the connection failed): nothing more to read or write.
    terminated: bool,
    /// A `Closed` went to the app already.
    closed_told: bool,
    max_message: usize,
    /// `permessage-deflate`, when negotiated: its settings and the client's frames on their
    /// way to tungstenite.
    deflate: Option<(Deflate, Inbound)>,
    /// Compressed frames read but not inflated yet (see [`WsCodec::feed_within`]).
    held_back: bool,
    /// The client's end of stream, read behind frames held back: told once they are through.
    eof_held: bool,
    /// The client's frames failed the connection: the close code and why, for the server's log
    /// (boxed: an idle socket pays one pointer).
    failure: Option<Box<(u16, String)>>,
}

/// The read buffer tungstenite allocates for every connection when it starts (its default,
/// 128 KiB, is 1.3 GB for 10,000 idle sockets); a larger frame grows it for its own length.
/// It is also what tungstenite zero-fills and copies in per read: 1 KiB decodes 16-64 KiB
/// messages about three times faster than 4 KiB did, others as fast, and an idle socket costs
/// 3 KiB less (measured 2026-12-04).
const READ_BUFFER: usize = 1024;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(key)
}

impl WsCodec {
    /// A server's codec; messages (and frames) above `max_message` bytes fail the connection
    /// with 1009.
    pub fn new(max_message: usize) -> WsCodec {
        // tungstenite zero-fills its whole read buffer before each read (128 KiB by default):
        // a memset per incoming frame, and 128 KiB of RSS kept by every socket that ever read.
        // The bytes are already in memory (the pipe), so a small buffer loses nothing; a large
        // frame still gets a buffer of its own size.
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        WsCodec {
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            pipe: Pipe::default(),
            held_back: false,
            eof_held: false,
            terminated: false,
            closed_told: false,
            max_message,
            deflate: None,
            failure: None,
        }
    }

    /// The codec of a connection that negotiated `permessage-deflate`.
    pub fn compressed(mut self, deflate: Deflate) -> WsCodec {
        self.deflate = Some((deflate, Inbound::default()));
        self
    }

    /// Decodes what `bytes` complete (pongs and the close reply go to the output); `eof` when
    /// the client's side of the connection is closed.
    pub fn feed(&mut self, bytes: &[u8], eof: bool) -> Vec<WsIncoming> {
        self.feed_within(bytes, eof, usize::MAX)
    }

    /// [`WsCodec::feed`], decoding about `budget` bytes of messages at most when they come
    /// compressed: the rest stay compressed until a later call ([`WsCodec::held_back`]), so
    /// that what a reader holds for an app that is behind stays bounded however well its
    /// client's messages compress. (Plain messages cost what was read.)
    pub fn feed_within(&mut self, bytes: &[u8], eof: bool, budget: usize) -> Vec<WsIncoming> {
        let mut out = Vec::new();
        if self.terminated {
            return out;
        }
        // Frames ahead of a compressed one that fails are still read (and the app gets them).
        let inflated = match &mut self.deflate {
            Some((_, inbound)) => {
                let max = self.max_message;
                let held = inbound.feed_within(bytes, &mut self.pipe.input, max, budget);
                self.held_back = held == Ok(true);
                held.map(|_| ())
            }
            None => {
                self.pipe.input.extend_from_slice(bytes);
                Ok(())
            }
        };
        self.eof_held |= eof;
        self.pipe.eof |= self.eof_held && !self.held_back;
        loop {
            match self.ctx.read(&mut self.pipe) {
                Ok(Message::Text(text)) => out.push(WsIncoming::Text(text.as_str().to_owned())),
                Ok(Message::Binary(data)) => out.push(WsIncoming::Binary(data.to_vec())),
                Ok(Message::Close(frame)) => {
                    let (code, reason) = match frame {
                        None => (1005, String::new()),
                        // tungstenite answers a bad code on a client's close with 1002, but
                        // passes it through when the close replies to ours (found by fuzzing).
                        Some(f) if !close_code_may_be_sent(u16::from(f.code)) => (
                            1002,
                            format!("the client's close has code {}", u16::from(f.code)),
                        ),
                        Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    };
                    self.tell_closed(&mut out, code, reason);
                }
                Ok(_) => {}
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    self.terminated = true;
                    self.tell_closed(&mut out, 1005, String::new());
                    break;
                }
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    self.terminated = true;
                    self.tell_closed(&mut out, 1006, String::new());
                    break;
                }
                Err(e) => {
                    let top_bit = matches!(&e, WsError::Capacity(CapacityError::MessageTooLong { size, .. })
                        if ws_deflate::length_has_top_bit(*size as u64));
                    let code = match &e {
                        _ if top_bit => 1002,
                        WsError::Capacity(CapacityError::MessageTooLong { .. }) => 1009,
                        WsError::Capacity(_) => 1009,
                        WsError::Utf8(_) => 1007,
                        WsError::Protocol(_) => 1002,
                        _ => 1011,
                    };
                    // tungstenite's own text for bad UTF-8 shows only the replacement character.
                    let why = match &e {
                        _ if top_bit => ws_deflate::TOP_BIT_LENGTH.to_owned(),
                        WsError::Utf8(_) => {
                            "invalid UTF-8 (a text message or a close reason)".to_owned()
                        }
                        e => e.to_string(),
                    };
                    self.fail(code, &why);
                    self.tell_closed(&mut out, code, why);
                    break;
                }
            }
        }
        if let Err((code, why)) = inflated {
            if !self.terminated {
                self.fail(code, &why);
                self.tell_closed(&mut out, code, why);
            }
        }
        out
    }

    /// Why the client's frames failed the connection (the close code sent, and the reason),
    /// once, for the server's log.
    pub fn take_failure(&mut self) -> Option<(u16, String)> {
        self.failure.take().map(|f| *f)
    }

    /// Compressed messages are held back from an earlier read: feed again (no bytes needed)
    /// before reading more from the client.
    pub fn held_back(&self) -> bool {
        self.held_back && !self.terminated
    }

    fn tell_closed(&mut self, out: &mut Vec<WsIncoming>, code: u16, reason: String) {
        if !self.closed_told {
            self.closed_told = true;
            out.push(WsIncoming::Closed { code, reason });
        }
    }

    /// Closes with `code` after a failure of the client's frames; the connection is over once
    /// the output is written.
    fn fail(&mut self, code: u16, why: &str) {
        self.failure = Some(Box::new((code, why.to_owned())));
        let reason = truncated(why, MAX_CLOSE_REASON);
        let _ = self.ctx.close(
            &mut self.pipe,
            Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }),
        );
        self.terminated = true;
    }

    /// Encodes one message of the app's. Fails once the connection is closing.
    pub fn send(&mut self, message: WsOutgoing) -> Result<(), String> {
        if self.terminated {
            return Err("the connection is closed".into());
        }
        let message = match message {
            WsOutgoing::Text(t) => self
                .deflated(t.as_bytes(), Data::Text)
                .unwrap_or_else(|| Message::Text(t.into())),
            WsOutgoing::Binary(b) => self
                .deflated(&b, Data::Binary)
                .unwrap_or_else(|| Message::Binary(b.into())),
            WsOutgoing::Close { code, reason } => {
                // Checked here too: the frame is the wire's, whoever built the message.
                check_close(code, &reason)?;
                Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                }))
            }
        };
        self.ctx
            .write(&mut self.pipe, message)
            .and_then(|()| self.ctx.flush(&mut self.pipe))
            .map_err(|e| e.to_string())
    }

    /// A message as one compressed frame (RSV1 set), which tungstenite writes as it is; None
    /// without `permessage-deflate` or when deflating is not worth it (see
    /// [`ws_deflate::deflate`]).
    fn deflated(&self, data: &[u8], kind: Data) -> Option<Message> {
        let (settled, _) = self.deflate.as_ref()?;
        let packed = ws_deflate::deflate(data, settled.server_window_bits)?;
        let mut frame = Frame::message(packed, OpCode::Data(kind), true);
        frame.header_mut().rsv1 = true;
        Some(Message::Frame(frame))
    }

    /// Sends a ping (the server's keepalive); nothing once the connection is closing.
    pub fn ping(&mut self, payload: &[u8]) {
        if self.can_send() {
            let _ = self
                .ctx
                .write(&mut self.pipe, Message::Ping(payload.to_vec().into()))
                .and_then(|()| self.ctx.flush(&mut self.pipe));
        }
    }

    /// Bytes to write to the client (the caller drains what it wrote).
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.pipe.output
    }

    /// Whether the connection is over (close handshake done, or failed): once the output is
    /// written, the server closes it.
    pub fn is_terminated(&self) -> bool {
        self.terminated
    }

    /// Whether the app may still send (no close sent or received).
    pub fn can_send(&self) -> bool {
        !self.terminated && self.ctx.can_write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn the_accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn fragments_pings_and_the_close_handshake() {
        let mut c = WsCodec::new(1 << 20);
        let mut bytes = frame(false, 1, b"hel");
        bytes.extend(frame(true, 9, b"p"));
        bytes.extend(frame(true, 0, b"lo"));
        // Split anywhere: the codec waits for the rest.
        assert_eq!(c.feed(&bytes[..5], false), vec![]);
        assert_eq!(
            c.feed(&bytes[5..], false),
            vec![WsIncoming::Text("hello".into())]
        );
        assert_eq!(
            c.output()[..2],
            [0x8a, 1],
            "the ping was answered with a pong"
        );
        c.output().clear();
        c.send(WsOutgoing::Binary(vec![1, 2])).unwrap();
        assert_eq!(
            c.output()[..],
            [0x82, 2, 1, 2],
            "server frames are unmasked"
        );
        c.output().clear();
        let mut close = vec![0x03, 0xe8];
        close.extend_from_slice(b"bye");
        assert_eq!(
            c.feed(&frame(true, 8, &close), false),
            vec![WsIncoming::Closed {
                code: 1000,
                reason: "bye".into()
            }]
        );
        assert_eq!(
            c.output()[..4],
            [0x88, 5, 0x03, 0xe8],
            "the close is echoed"
        );
        assert!(c.is_terminated());
        assert!(c.send(WsOutgoing::Text("late".into())).is_err());
    }

    #[test]
    fn broken_frames_close_with_their_code() {
        assert_eq!(
            first_closed(&mut WsCodec::new(1 << 20), &frame(true, 1, b"\xff\xfe")),
            1007
        );
        let mut small = WsCodec::new(8);
        let closed = first_closed(&mut small, &frame(true, 2, b"0123456789"));
        assert_eq!(closed, 1009);
        assert_eq!(small.output()[0], 0x88, "a close frame went out");
        let unmasked = [0x81u8, 1, b'x'];
        assert_eq!(first_closed(&mut WsCodec::new(1 << 20), &unmasked), 1002);
        // A 64-bit length with its top bit set breaks the framing, whatever the size limit;
        // a plain huge one is over the limit.
        let deflated = || {
            WsCodec::new(1 << 20).compressed(Deflate {
                server_window_bits: 15,
            })
        };
        for (top, code) in [(0x80u8, 1002), (0x7f, 1009)] {
            let mut huge = vec![0x82u8, 0x80 | 127, top, 0, 0, 0, 0, 0, 0, 1];
            huge.extend_from_slice(&[0; 4]);
            assert_eq!(first_closed(&mut WsCodec::new(1 << 20), &huge), code);
            assert_eq!(first_closed(&mut deflated(), &huge), code);
            huge[0] = 0xc2;
            assert_eq!(first_closed(&mut deflated(), &huge), code, "compressed");
        }
        let mut gone = WsCodec::new(1 << 20);
        assert_eq!(
            gone.feed(&[], true),
            vec![WsIncoming::Closed {
                code: 1006,
                reason: String::new()
            }]
        );
    }

    #[test]
    fn only_close_frames_the_rfc_allows_go_out() {
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            assert!(check_close(code, "").is_ok(), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(check_close(code, "").is_err(), "{code}");
        }
        assert!(check_close(1000, &"é".repeat(61)).is_ok(), "122 bytes");
        assert!(check_close(1000, &"é".repeat(62)).is_err(), "124 bytes");
        let mut c = WsCodec::new(1 << 20);
        let refused = c.send(WsOutgoing::Close {
            code: 1005,
            reason: String::new(),
        });
        assert!(refused.is_err() && c.output().is_empty() && c.can_send());
        assert_eq!(truncated("aé", 2), "a", "cut at a character boundary");
    }

    #[test]
    fn a_bad_code_in_the_reply_to_our_close_is_a_protocol_error() {
        let mut c = WsCodec::new(1 << 20);
        c.send(WsOutgoing::Close {
            code: 4000,
            reason: String::new(),
        })
        .unwrap();
        let mut close = 14u16.to_be_bytes().to_vec();
        close.push(b'b');
        assert_eq!(
            c.feed(&frame(true, 8, &close), false),
            vec![WsIncoming::Closed {
                code: 1002,
                reason: "the client's close has code 14".into()
            }]
        );
    }

    #[test]
    fn pings_and_what_messages_cost() {
        let mut c = WsCodec::new(1 << 20);
        c.ping(b"hi");
        assert_eq!(c.output()[..], [0x89, 2, b'h', b'i']);
        let empty = WsIncoming::Text(String::new());
        assert!(empty.cost() > 0, "an empty message still counts");
        assert!(WsIncoming::Binary(vec![0; 100]).cost() >= 100);
    }

    /// A codec that negotiated `permessage-deflate`, messages up to 1 MiB.
    fn compressed_codec() -> WsCodec {
        WsCodec::new(1 << 20).compressed(Deflate {
            server_window_bits: 15,
        })
    }

    /// A compressed text frame the client sends (unmasked by a zero mask).
    fn compressed_text(text: &str) -> Vec<u8> {
        let payload = ws_deflate::deflate(text.as_bytes(), 15).unwrap();
        let mut f = vec![0xc1, 0x80 | 126];
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&payload);
        f
    }

    #[test]
    fn compressed_messages_past_the_budget_stay_compressed_until_asked_for() {
        let mut c = compressed_codec();
        let big = "x".repeat(60_000);
        let bytes: Vec<u8> = (0..5).flat_map(|_| compressed_text(&big)).collect();
        assert!(
            bytes.len() < 4000,
            "{} bytes read inflate to 300 KB",
            bytes.len()
        );
        // The end of stream came with them: told only once they are through.
        let first = c.feed_within(&bytes, true, 100_000);
        assert_eq!(first.len(), 2, "stops once the budget is spent");
        assert!(c.held_back());
        let second = c.feed_within(&[], false, 60_000);
        assert_eq!(second, vec![WsIncoming::Text(big.clone())]);
        let rest = c.feed_within(&[], false, usize::MAX);
        assert!(!c.held_back());
        assert_eq!(
            rest,
            vec![
                WsIncoming::Text(big.clone()),
                WsIncoming::Text(big),
                WsIncoming::Closed {
                    code: 1006,
                    reason: String::new()
                }
            ]
        );
    }

    #[test]
    fn compressed_messages_both_ways() {
        let mut c = compressed_codec();
        let text = "compress me ".repeat(100);
        let mut bytes = frame(true, 1, b"plain too");
        bytes.extend(compressed_text(&text));
        assert_eq!(
            c.feed(&bytes, false),
            vec![
                WsIncoming::Text("plain too".into()),
                WsIncoming::Text(text.clone())
            ]
        );
        // A long message goes compressed (RSV1), a short one as it is.
        c.send(WsOutgoing::Text(text.clone())).unwrap();
        c.send(WsOutgoing::Text("short".into())).unwrap();
        let out = std::mem::take(c.output());
        assert_eq!(out[0], 0xc1);
        let len = usize::from(out[1]);
        assert!(len < 126 && len < text.len() / 4, "{len}");
        let mut z = flate2::Decompress::new(false);
        let mut input = out[2..2 + len].to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut inflated = Vec::with_capacity(4096);
        z.decompress_vec(&input, &mut inflated, flate2::FlushDecompress::Sync)
            .unwrap();
        assert_eq!(inflated, text.as_bytes());
        assert_eq!(out[2 + len..], [&[0x81u8, 5][..], b"short"].concat()[..]);
        // Text that is not UTF-8 once inflated fails as plain text does.
        let bad = ws_deflate::squeeze(
            &mut flate2::Compress::new(flate2::Compression::default(), false),
            b"\xff\xfe",
        );
        let mut bytes = vec![0xc1, 0x80 | bad.len() as u8, 0, 0, 0, 0];
        bytes.extend_from_slice(&bad);
        assert_eq!(first_closed(&mut c, &bytes), 1007);
    }

    fn first_closed(c: &mut WsCodec, bytes: &[u8]) -> u16 {
        match c.feed(bytes, false).into_iter().next() {
            Some(WsIncoming::Closed { code, .. }) => code,
            other => panic!("no close: {other:?}"),
        }
    }
}
