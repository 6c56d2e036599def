//! `permessage-deflate` (RFC 7692) beside tungstenite, which fails every frame with an RSV bit
//! set: the frames of a compressed message are inflated into one plain frame before tungstenite
//! reads them, and the app's messages are deflated into frames tungstenite writes as they are.
//! So the protocol (fragments, control frames, UTF-8, the close handshake, size limits) stays
//! tungstenite's, on the inflated bytes.
//!
//! Both directions go without context takeover (the server says so for the client too, which
//! RFC 7692 7.1.1 allows): no socket keeps a zlib context between messages, and one per thread
//! serves every socket. An idle socket costs nothing; a compressed message from the client is
//! held compressed until its last fragment (at most the message limit).

use std::cell::RefCell;
use std::io::Cursor;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// What a connection's negotiation settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The client's `server_max_window_bits` (15 without one): the server's messages refer back
    /// at most this far; 8, below zlib's smallest window, means they go uncompressed.
    pub server_window_bits: u8,
}

/// Why a frame whose 64-bit length has its most significant bit set fails the connection with
/// 1002: RFC 6455 5.2 says that bit MUST be 0. (tungstenite reads such a length as a huge
/// frame and reports a capacity error, which would be 1009.)
pub const TOP_BIT_LENGTH: &str = "a frame length with its most significant bit set";

/// Whether a frame's payload length breaks RFC 6455 5.2.
pub fn length_has_top_bit(length: u64) -> bool {
    length >> 63 != 0
}

/// Messages shorter than this go uncompressed: deflate's framing would eat what it saves.
pub const MIN_COMPRESSED: usize = 64;

/// Messages longer than this go uncompressed: the codec runs on nginx's event loop, which must
/// not spend milliseconds deflating one message while other connections wait.
pub const MAX_COMPRESSED: usize = 256 * 1024;

/// The client's offers (`Sec-WebSocket-Extensions`, every header's value joined with `,`):
/// the first `permessage-deflate` offer the server can take, and the response header's value.
/// An offer with a parameter unknown, repeated or out of range is declined (RFC 7692 7.1).
pub fn negotiate(offers: &[u8]) -> Option<(Deflate, String)> {
    let offers = std::str::from_utf8(offers).ok()?;
    offers.split(',').find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<(Deflate, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = Vec::new();
    let mut server_window_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquoted(v.trim())?)),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_window_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    let mut response =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_window_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some((
        Deflate {
            server_window_bits: server_window_bits.unwrap_or(15),
        },
        response,
    ))
}

/// A parameter's value, a token or one quoted string.
fn unquoted(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|v| !v.contains('"')),
        None => (!value.contains('"')).then_some(value),
    }
}

/// 8 to 15, written without a leading zero (RFC 7692 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty()
        || value.len() > 2
        || value.starts_with('0')
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Why the client's frames fail the connection: a close code and its reason.
pub type Failure = (u16, String);

/// The tail every compressed message's deflate stream lacks (RFC 7692 7.2.2).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// The zlib contexts of this thread, reset at every message.
struct Zlib {
    inflate: Decompress,
    /// By window bits, 9 to 15 (made when first needed).
    deflate: [Option<Compress>; 7],
}

thread_local! {
    static ZLIB: RefCell<Zlib> = RefCell::new(Zlib {
        inflate: Decompress::new_with_window_bits(false, 15),
        deflate: Default::default(),
    });
}

/// Where a connection's incoming frames are, between messages.
#[derive(Debug, Default)]
enum InMessage {
    #[default]
    Between,
    /// A fragmented message without compression: its continuations pass as they are.
    Plain,
    /// A compressed message's opcode and payload so far, until its last fragment.
    Compressed { opcode: Data, payload: Vec<u8> },
}

/// One connection's incoming bytes on their way to tungstenite.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Bytes not yet framed.
    raw: Vec<u8>,
    /// Payload bytes of a frame that passes as it is, still to come.
    passing: u64,
    message: InMessage,
}

impl Inbound {
    /// Moves `bytes` on to `out`, a compressed message as one plain frame once it is whole.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        max_message: usize,
    ) -> Result<(), Failure> {
        self.feed_within(bytes, out, max_message, usize::MAX)
            .map(|_| ())
    }

    /// [`Inbound::feed`], inflating messages only while `out` has grown by less than `budget`
    /// bytes: a few KiB read can inflate to many MiB (1,000 to 1 at zlib's best), which the
    /// reader's backlog bound, counted in inflated bytes, would only see afterwards. The frames
    /// left are kept, compressed, for the next call (which may bring no bytes); whether some
    /// are.
    pub fn feed_within(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        max_message: usize,
        budget: usize,
    ) -> Result<bool, Failure> {
        self.raw.extend_from_slice(bytes);
        let started = out.len();
        let mut held_back = false;
        let mut at = 0;
        let result = loop {
            let rest = &self.raw[at..];
            if self.passing > 0 {
                let n = rest
                    .len()
                    .min(usize::try_from(self.passing).unwrap_or(usize::MAX));
                out.extend_from_slice(&rest[..n]);
                at += n;
                self.passing -= n as u64;
                if self.passing > 0 {
                    break Ok(());
                }
                continue;
            }
            let mut cursor = Cursor::new(rest);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break Ok(()),
                // tungstenite parses the same bytes and fails the connection as it should.
                Err(_) => {
                    self.passing = u64::MAX;
                    continue;
                }
            };
            let head_len = cursor.position() as usize;
            if length_has_top_bit(length) {
                break Err((1002, TOP_BIT_LENGTH.into()));
            }
            if matches!(self.message, InMessage::Compressed { .. })
                && matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary))
            {
                // tungstenite never saw the message this one interrupts: it would take it.
                break Err((1002, "a new message inside a fragmented one".into()));
            }
            if !self.takes(&header) {
                if let OpCode::Data(data) = header.opcode {
                    // tungstenite checks the order; this only tells a continuation's message.
                    self.message = match (data, header.is_final) {
                        (_, true) => InMessage::Between,
                        (Data::Continue, false) => std::mem::take(&mut self.message),
                        (_, false) => InMessage::Plain,
                    };
                }
                out.extend_from_slice(&rest[..head_len]);
                at += head_len;
                self.passing = length;
                continue;
            }
            let held = match &self.message {
                InMessage::Compressed { payload, .. } => payload.len(),
                _ => 0,
            };
            // Incompressible data comes out a little larger than it went in (zlib's
            // deflateBound): a message the limit admits must not be refused for it.
            let bound = max_message
                .saturating_add(max_message / 256)
                .saturating_add(64);
            if length > bound.saturating_sub(held) as u64 {
                break Err((1009, format!("a compressed message over {bound} bytes")));
            }
            // `length` is within the bound, itself a usize.
            let end = head_len + length as usize;
            if rest.len() < end {
                break Ok(());
            }
            // The fragment goes straight onto the message held so far, unmasked there.
            let (opcode, mut payload) = match (std::mem::take(&mut self.message), header.opcode) {
                (InMessage::Compressed { opcode, payload }, _) => (opcode, payload),
                (_, OpCode::Data(opcode)) => (opcode, Vec::with_capacity(length as usize)),
                (_, OpCode::Control(_)) => unreachable!("control frames pass as they are"),
            };
            let start = payload.len();
            payload.extend_from_slice(&rest[head_len..end]);
            at += end;
            if let Some(mask) = header.mask {
                for (i, b) in payload[start..].iter_mut().enumerate() {
                    *b ^= mask[i & 3];
                }
            }
            if !header.is_final {
                self.message = InMessage::Compressed { opcode, payload };
                continue;
            }
            let plain =
                match ZLIB.with(|z| inflate(&mut z.borrow_mut().inflate, &payload, max_message)) {
                    Ok(plain) => plain,
                    Err(e) => break Err(e),
                };
            let frame = FrameHeader {
                is_final: true,
                opcode: OpCode::Data(opcode),
                // tungstenite reads client frames masked: a zero mask leaves the bytes as they
                // are.
                mask: Some([0; 4]),
                ..FrameHeader::default()
            };
            if let Err(e) = frame.format(plain.len() as u64, out) {
                break Err((1011, e.to_string()));
            }
            out.extend_from_slice(&plain);
            if out.len() - started >= budget && at < self.raw.len() {
                held_back = true;
                break Ok(());
            }
        };
        self.raw.drain(..at);
        result.map(|()| held_back)
    }

    /// Whether this frame is one to inflate: a masked data frame with only RSV1 set that starts
    /// a message, or any data frame that continues a compressed one. Everything else passes to
    /// tungstenite as it is, which fails what breaks the protocol: RSV1 on a control frame or on
    /// a continuation, a continuation without a message, an unmasked frame.
    fn takes(&self, header: &FrameHeader) -> bool {
        if header.rsv2 || header.rsv3 || header.mask.is_none() {
            return false;
        }
        match (&self.message, header.opcode) {
            (InMessage::Between, OpCode::Data(Data::Text | Data::Binary)) => header.rsv1,
            (InMessage::Compressed { .. }, OpCode::Data(Data::Continue)) => !header.rsv1,
            _ => false,
        }
    }
}

/// A compressed message's payload inflated: at most `max_message` bytes, its deflate stream
/// either ending (BFINAL) with nothing after it, or completed by the tail on a block boundary.
fn inflate(z: &mut Decompress, payload: &[u8], max_message: usize) -> Result<Vec<u8>, Failure> {
    z.reset(false);
    let mut out = Vec::new();
    if run_inflate(z, payload, &mut out, max_message)? {
        return Ok(out);
    }
    // Where the message stopped mid-block the tail is taken as data (or breaks the stream):
    // a stream cut short.
    let whole = out.len();
    if run_inflate(z, &TAIL, &mut out, max_message)? || out.len() != whole {
        return Err((1007, "a compressed message cut short".into()));
    }
    Ok(out)
}

/// Inflates all of `input` into `out`; whether the deflate stream ended (BFINAL).
fn run_inflate(
    z: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    max_message: usize,
) -> Result<bool, Failure> {
    let limit = max_message.saturating_add(1);
    let start = z.total_in();
    loop {
        let consumed = usize::try_from(z.total_in() - start).unwrap_or(usize::MAX);
        if consumed >= input.len() && out.len() < out.capacity() {
            return Ok(false);
        }
        if out.len() == out.capacity() {
            if out.len() > max_message {
                return Err((
                    1009,
                    format!("a message over {max_message} bytes once inflated"),
                ));
            }
            // Exactly: never more than the limit allows, whatever the growth policy.
            let more = (input.len().saturating_mul(3).max(256)).min(limit - out.len());
            out.reserve_exact(more);
        }
        let before = (z.total_in(), z.total_out());
        let status = z
            .decompress_vec(
                &input[consumed.min(input.len())..],
                out,
                FlushDecompress::Sync,
            )
            .map_err(|e| {
                (
                    1007,
                    format!("a compressed message that does not inflate: {e}"),
                )
            })?;
        if status == Status::StreamEnd {
            if usize::try_from(z.total_in() - start).unwrap_or(usize::MAX) < input.len() {
                return Err((1007, "bytes after the end of a compressed message".into()));
            }
            return Ok(true);
        }
        if (z.total_in(), z.total_out()) == before && out.len() < out.capacity() {
            if usize::try_from(z.total_in() - start).unwrap_or(usize::MAX) >= input.len() {
                // All the input is in and nothing was pending (it ran out just as the output
                // filled up, or there was none: an empty payload): the message goes on, or the
                // tail ends it.
                return Ok(false);
            }
            return Err((1007, "a compressed message cut short".into()));
        }
    }
}

/// `data` as a compressed message's payload, for a peer whose window is `window_bits`; None
/// when it is not worth it: too short or too long (see the bounds), a window below zlib's
/// smallest, or a result no smaller than the data (random or already compressed bytes).
pub fn deflate(data: &[u8], window_bits: u8) -> Option<Vec<u8>> {
    if !(MIN_COMPRESSED..=MAX_COMPRESSED).contains(&data.len()) || window_bits < 9 {
        return None;
    }
    let bits = window_bits.min(15);
    ZLIB.with(|z| {
        let mut z = z.borrow_mut();
        let compress = z.deflate[usize::from(bits - 9)].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::fast(), false, bits)
        });
        let out = squeeze(compress, data);
        (out.len() < data.len()).then_some(out)
    })
}

/// One message through `compress` from its start, less the tail (RFC 7692 7.2.1).
pub(crate) fn squeeze(compress: &mut Compress, data: &[u8]) -> Vec<u8> {
    compress.reset();
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let start = compress.total_in();
    loop {
        let consumed = (compress.total_in() - start) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        compress
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflate on memory cannot fail");
        if (compress.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client sends: any data, compressed whatever it gains.
    fn client_deflate(data: &[u8]) -> Vec<u8> {
        squeeze(&mut Compress::new(Compression::default(), false), data)
    }

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7u8, 1, 9, 200];
        let header = FrameHeader {
            is_final: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            opcode: OpCode::from(first & 0x0f),
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut f = Vec::new();
        header.format(payload.len() as u64, &mut f).unwrap();
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    #[test]
    fn offers_are_taken_or_declined_by_their_parameters() {
        let (d, response) = negotiate(b"permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(d.server_window_bits, 15);
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let (d, response) = negotiate(
            b"permessage-deflate; server_max_window_bits=10; x, permessage-deflate; server_max_window_bits=\"9\"",
        )
        .unwrap();
        assert_eq!(d.server_window_bits, 9, "the first offer is declined");
        assert!(response.ends_with("; server_max_window_bits=9"));
        for declined in [
            &b"x-webkit-deflate-frame"[..],
            b"permessage-deflate; server_max_window_bits",
            b"permessage-deflate; server_max_window_bits=16",
            b"permessage-deflate; client_max_window_bits=7",
            b"permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            b"permessage-deflate; server_no_context_takeover=1",
            b"\xff",
        ] {
            assert_eq!(
                negotiate(declined),
                None,
                "{}",
                String::from_utf8_lossy(declined)
            );
        }
    }

    #[test]
    fn a_compressed_message_in_fragments_becomes_one_plain_frame() {
        let text = "hello hello hello hello hello hello".repeat(20);
        let compressed = client_deflate(text.as_bytes());
        assert!(compressed.len() < text.len() / 4);
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut bytes = client_frame(0x41, a); // text, RSV1, not final
        bytes.extend(client_frame(0x89, b"hi")); // a ping between the fragments
        bytes.extend(client_frame(0x80, b)); // the last continuation
        bytes.extend(client_frame(0x82, b"plain")); // then an uncompressed binary message
        let mut inbound = Inbound::default();
        let mut out = Vec::new();
        // Byte by byte: frames split anywhere.
        for byte in &bytes {
            inbound.feed(&[*byte], &mut out, 1 << 20).unwrap();
        }
        let mut cursor = Cursor::new(&out[..]);
        let mut frames = Vec::new();
        while let Some((h, len)) = FrameHeader::parse(&mut cursor).unwrap() {
            let at = cursor.position() as usize;
            let mut payload = out[at..at + len as usize].to_vec();
            if let Some(mask) = h.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i & 3];
                }
            }
            cursor.set_position((at + len as usize) as u64);
            frames.push((h.opcode, h.is_final, h.rsv1, payload));
        }
        assert_eq!(
            frames,
            vec![
                (OpCode::from(9), true, false, b"hi".to_vec()),
                (OpCode::from(1), true, false, text.into_bytes()),
                (OpCode::from(2), true, false, b"plain".to_vec()),
            ]
        );
    }

    #[test]
    fn a_message_whose_input_ends_as_the_output_fills_up_inflates() {
        // The first output buffer is 256 bytes (the least it reserves), then grows by as much:
        // a well-compressed message of a multiple of that ends its input on a full buffer.
        for size in [255, 256, 257, 512, 768, 1024, 4096, 65536] {
            let text = "a".repeat(size);
            let mut out = Vec::new();
            Inbound::default()
                .feed(
                    &client_frame(0xc1, &client_deflate(text.as_bytes())),
                    &mut out,
                    1 << 20,
                )
                .unwrap_or_else(|e| panic!("{size}: {e:?}"));
            let mut cursor = Cursor::new(&out[..]);
            let (_, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(len as usize, size);
            assert_eq!(&out[cursor.position() as usize..], text.as_bytes());
        }
    }

    #[test]
    fn a_compressed_empty_payload_is_the_empty_message() {
        let mut out = Vec::new();
        Inbound::default()
            .feed(&client_frame(0xc1, b""), &mut out, 1024)
            .unwrap();
        let (h, len) = FrameHeader::parse(&mut Cursor::new(&out[..]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.opcode, h.is_final, h.rsv1, len),
            (OpCode::from(1), true, false, 0)
        );
    }

    #[test]
    fn a_bomb_fails_at_the_limit_and_garbage_fails_to_inflate() {
        let zeros = vec![0u8; 1 << 20];
        let compressed = client_deflate(&zeros);
        assert!(compressed.len() < 16 * 1024, "{}", compressed.len());
        let mut out = Vec::new();
        let err = Inbound::default()
            .feed(&client_frame(0xc2, &compressed), &mut out, 64 * 1024)
            .unwrap_err();
        assert_eq!(err.0, 1009, "{err:?}");
        let err = Inbound::default()
            .feed(&client_frame(0xc1, b"\xff\xff\xff\xff"), &mut out, 1024)
            .unwrap_err();
        assert_eq!(err.0, 1007, "{err:?}");
    }

    #[test]
    fn a_limit_below_the_first_buffer_is_kept() {
        // Found by fuzzing: a first output buffer of 256 bytes asked for over a 64-byte limit.
        let mut out = Vec::new();
        Inbound::default()
            .feed(&client_frame(0xc1, &client_deflate(b"warm")), &mut out, 64)
            .unwrap();
        assert!(out.ends_with(b"warm"));
        let err = Inbound::default()
            .feed(
                &client_frame(0xc1, &client_deflate(&[b'a'; 65])),
                &mut out,
                64,
            )
            .unwrap_err();
        assert_eq!(err.0, 1009);
    }

    #[test]
    fn a_new_message_inside_a_compressed_one_fails() {
        // Found in review: tungstenite, which never saw the first fragment, would take it.
        let compressed = client_deflate(b"first message");
        for next in [client_frame(0x81, b"interloper"), client_frame(0x02, b"ab")] {
            let mut bytes = client_frame(0x41, &compressed[..4]);
            bytes.extend(next);
            let err = Inbound::default()
                .feed(&bytes, &mut Vec::new(), 1024)
                .unwrap_err();
            assert_eq!(err.0, 1002);
        }
    }

    #[test]
    fn a_stream_cut_short_or_with_bytes_after_its_end_fails() {
        // A stored block that says 1000 bytes and brings 3: the tail would be taken as data.
        let cut = [0x00, 0xe8, 0x03, 0x17, 0xfc, b'a', b'b', b'c'];
        let err = Inbound::default()
            .feed(&client_frame(0xc2, &cut), &mut Vec::new(), 1024)
            .unwrap_err();
        assert_eq!(err, (1007, "a compressed message cut short".into()));
        // A final block, then more.
        let after = [0x01, 0x02, 0x00, 0xfd, 0xff, b'h', b'i', 0xde, 0xad];
        let err = Inbound::default()
            .feed(&client_frame(0xc2, &after), &mut Vec::new(), 1024)
            .unwrap_err();
        assert_eq!(err.0, 1007);
        // A final block alone is a whole message.
        let mut out = Vec::new();
        Inbound::default()
            .feed(&client_frame(0xc2, &after[..7]), &mut out, 1024)
            .unwrap();
        assert!(out.ends_with(b"hi"));
    }

    #[test]
    fn parameters_are_tokens_or_one_quoted_string() {
        for declined in [
            &b"permessage-deflate; server_max_window_bits=\"10"[..],
            b"permessage-deflate; server_max_window_bits=\"\"9\"\"",
            b"permessage-deflate; server_max_window_bits=09",
        ] {
            assert_eq!(
                negotiate(declined),
                None,
                "{}",
                String::from_utf8_lossy(declined)
            );
        }
        assert!(negotiate(b"PerMessage-Deflate ; Server_Max_Window_Bits = \"12\"").is_some());
    }

    #[test]
    fn frames_that_break_the_protocol_pass_for_tungstenite_to_fail() {
        // RSV1 on a control frame, and a continuation with RSV1 outside a compressed message.
        for bytes in [client_frame(0xc9, b"x"), client_frame(0xc0, b"x")] {
            let mut out = Vec::new();
            Inbound::default().feed(&bytes, &mut out, 1024).unwrap();
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn the_servers_messages_keep_within_the_clients_window() {
        // Repeats every 100 bytes: within reach of even a 9-bit window (zlib's 250 bytes).
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 100) as u8).collect();
        for bits in [9, 12, 15] {
            let mut payload = deflate(&data, bits).expect("compressible");
            payload.extend_from_slice(&TAIL);
            // A client's inflater with that window, as it would make it.
            let mut z = Decompress::new_with_window_bits(false, bits);
            let mut out = Vec::with_capacity(8192);
            z.decompress_vec(&payload, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, data, "{bits}");
        }
        // Below zlib's smallest window, short, long or incompressible: sent as it is.
        assert_eq!(deflate(&data, 8), None);
        assert_eq!(deflate(&data[..MIN_COMPRESSED - 1], 15), None);
        assert_eq!(deflate(&vec![0; MAX_COMPRESSED + 1], 15), None);
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(deflate(&noise, 15), None);
    }
}
