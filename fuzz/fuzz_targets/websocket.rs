//! A WebSocket client's bytes (frames built from arbitrary fields, or raw garbage) arriving in
//! arbitrary pieces at the server's codec, and the app's side of every message (`receive()`'s
//! dict, an echo or a close through `send()`'s checks). Invariants: nothing panics; every message
//! is within the configured limit, its text UTF-8; one close at most reaches the app, and nothing
//! after it; every byte the server writes parses as well-formed server frames (unmasked, no RSV
//! bits, known opcodes, whole control frames of at most 125 bytes, close codes that may be sent,
//! UTF-8 text and reasons, nothing after a close); the codec's memory stays within a bound set by
//! the limit, whatever the client sends. With `permessage-deflate` negotiated, the client also
//! sends compressed messages (deflated by the server's own code, cut into fragments, or raw
//! garbage with RSV1), and the server's RSV1 frames must inflate to what their opcode says.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ngx_wsgi::asgi::websocket::{app_message, receive_message};
use ngx_wsgi::asgi::ws_codec::close_code_may_be_sent;
use ngx_wsgi::asgi::ws_deflate::{self, Deflate};
use ngx_wsgi::asgi::{WsCodec, WsIncoming, WsOutgoing};
use ngx_wsgi_fuzz::with_python;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Rust heap bytes in use (Python allocates through malloc directly and is not counted).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Arbitrary, Debug)]
enum Piece {
    /// A frame as a client would write it, every field chosen.
    Frame {
        fin: bool,
        /// The three RSV bits (low bits).
        rsv: u8,
        opcode: u8,
        masked: bool,
        mask: [u8; 4],
        /// 0: the shortest length form, 1: 16-bit, 2: 64-bit, 3: the length below, whatever
        /// the payload.
        length_form: u8,
        claimed: u64,
        payload: Vec<u8>,
    },
    /// A close frame with this code and reason (masked).
    Close(u16, String),
    /// Text split into a fragmented message at these points (masked), pings between when true.
    Fragments(String, Vec<u8>, bool),
    /// A compressed message (text or binary), its deflated bytes cut at these points into
    /// fragments (the first with RSV1), pings between when true.
    Compressed(Vec<u8>, bool, Vec<u8>, bool),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum AppStep {
    /// Sends the message back, as an echo app does.
    Echo,
    /// `websocket.close` with this code and reason.
    Close(i32, String),
    /// The server's keepalive ping.
    Ping(Vec<u8>),
    Nothing,
}

#[derive(Arbitrary, Debug)]
struct Case {
    pieces: Vec<Piece>,
    /// Sizes of the reads the server gets (cycled; 0 counts as 1).
    splits: Vec<u16>,
    /// The location's message limit (`client_max_body_size`), small enough to be reached.
    max_message: u16,
    /// The client closes its side after its bytes.
    eof: bool,
    /// What the app does after each message (cycled).
    app: Vec<AppStep>,
    /// `permessage-deflate` negotiated, with this `server_max_window_bits` (8 + n % 8).
    deflate: Option<u8>,
    /// What the server lets one read inflate (its backlog's room; 0 counts as 1), or no bound.
    budget: Option<u16>,
}

fn masked(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

fn client_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.push((u8::from(fin) << 7) | opcode);
    length(out, 0x80, payload.len() as u64, 0);
    masked(out, payload, [0x37, 0xfa, 0x21, 0x3d]);
}

fn length(out: &mut Vec<u8>, mask_bit: u8, len: u64, form: u8) {
    match form {
        0 if len < 126 => out.push(mask_bit | len as u8),
        0 | 1 if len < 65536 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// A message cut at `cuts` into masked fragments, the first with `first` (its opcode and RSV
/// bits), pings between them when `pings`.
fn fragments(out: &mut Vec<u8>, bytes: &[u8], first: u8, cuts: &[u8], pings: bool) {
    let mut at = 0;
    let mut opcode = first;
    for &cut in cuts.iter().chain(std::iter::once(&u8::MAX)) {
        let end = (at + usize::from(cut)).min(bytes.len());
        let last = end == bytes.len();
        client_frame(out, last, opcode, &bytes[at..end]);
        if pings && !last {
            client_frame(out, true, 9, b"between");
        }
        opcode = 0;
        at = end;
        if last {
            break;
        }
    }
}

fn client_bytes(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Frame {
                fin,
                rsv,
                opcode,
                masked: is_masked,
                mask,
                length_form,
                claimed,
                payload,
            } => {
                out.push((u8::from(*fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f));
                let mask_bit = if *is_masked { 0x80 } else { 0 };
                match length_form & 3 {
                    3 => length(&mut out, mask_bit, *claimed, 2),
                    form => length(&mut out, mask_bit, payload.len() as u64, form),
                }
                if *is_masked {
                    masked(&mut out, payload, *mask);
                } else {
                    out.extend_from_slice(payload);
                }
            }
            Piece::Close(code, reason) => {
                let mut payload = code.to_be_bytes().to_vec();
                payload.extend_from_slice(reason.as_bytes());
                client_frame(&mut out, true, 8, &payload);
            }
            Piece::Fragments(text, cuts, pings) => {
                fragments(&mut out, text.as_bytes(), 1, cuts, *pings);
            }
            Piece::Compressed(data, text, cuts, pings) => {
                // Text that is not UTF-8 too: the server must refuse it once inflated.
                let first = if *text { 0x41 } else { 0x42 };
                fragments(&mut out, &client_deflate(data), first, cuts, *pings);
            }
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// A client's compressed message payload: any bytes, compressed whatever it gains.
fn client_deflate(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    loop {
        let at = z.total_in() as usize;
        z.compress_vec(&data[at..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        if z.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    out.truncate(out.len() - 4);
    out
}

/// A server message's payload inflated (RFC 7692 7.2.2) by a client whose window is
/// `window_bits`: one the server's back-references overreach fails here.
fn inflate(payload: &[u8], window_bits: u8) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut z = flate2::Decompress::new_with_window_bits(false, window_bits);
    let mut out = Vec::with_capacity(payload.len() * 8 + 1024);
    loop {
        let at = z.total_in() as usize;
        z.decompress_vec(&input[at..], &mut out, flate2::FlushDecompress::Sync)
            .expect("a server message that does not inflate");
        if z.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// The server's output parsed as frames; a broken frame panics with what is wrong.
#[derive(Default)]
struct ServerFrames {
    /// A partial frame from an earlier write.
    pending: Vec<u8>,
    closed: bool,
    /// Inside a fragmented message (the server sends none, but a continuation would need one).
    fragmented: bool,
    /// `permessage-deflate` was negotiated with this window: data frames may have RSV1 (not
    /// below 9 bits, where the server sends its messages as they are).
    deflate: Option<u8>,
}

impl ServerFrames {
    fn take(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        loop {
            let buf = &self.pending;
            if buf.len() < 2 {
                return;
            }
            let (b0, b1) = (buf[0], buf[1]);
            let compressed = b0 & 0x40 != 0;
            assert_eq!(b0 & 0x30, 0, "a server frame has RSV2 or RSV3: {b0:#x}");
            assert!(
                !compressed
                    || (self.deflate.is_some_and(|bits| bits >= 9) && matches!(b0 & 0x0f, 1 | 2)),
                "RSV1 on a server frame {b0:#x} (compression: {:?})",
                self.deflate
            );
            assert_eq!(b1 & 0x80, 0, "a server frame is masked");
            let (len, head) = match b1 & 0x7f {
                126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
                126 | 127 => return,
                n => (u64::from(n), 2),
            };
            if head == 4 {
                assert!(len >= 126, "a 16-bit length for {len} bytes");
            }
            if head == 10 {
                assert!(len >= 65536 && len >> 63 == 0, "a 64-bit length for {len}");
            }
            let len = len as usize;
            if buf.len() < head + len {
                return;
            }
            let mut payload = buf[head..head + len].to_vec();
            if let (true, Some(bits)) = (compressed, self.deflate) {
                payload = inflate(&payload, bits);
            }
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            assert!(!self.closed, "a frame after the server's close");
            match opcode {
                8..=10 => {
                    assert!(fin, "a fragmented control frame");
                    assert!(len <= 125, "a control frame of {len} bytes");
                    if opcode == 8 {
                        self.closed = true;
                        assert_ne!(len, 1, "a close payload of one byte");
                        if len >= 2 {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            assert!(
                                close_code_may_be_sent(code),
                                "close code {code} on the wire"
                            );
                            assert!(
                                std::str::from_utf8(&payload[2..]).is_ok(),
                                "a close reason that is not UTF-8"
                            );
                        }
                    }
                }
                1 | 2 => {
                    assert!(!self.fragmented, "a new message inside a fragmented one");
                    assert!(fin, "the server fragments no message");
                    if opcode == 1 {
                        assert!(
                            std::str::from_utf8(&payload).is_ok(),
                            "text that is not UTF-8"
                        );
                    }
                }
                other => panic!("server opcode {other}"),
            }
            self.pending.drain(..head + len);
        }
    }
}

fuzz_target!(|case: Case| {
    let bytes = client_bytes(&case.pieces);
    let max = usize::from(case.max_message).max(1);
    with_python(|py| {
        // The thread's zlib contexts live as long as the thread: made before the count starts.
        static WARM: std::sync::Once = std::sync::Once::new();
        WARM.call_once(|| {
            for bits in 9..=15 {
                ws_deflate::deflate(&[b'w'; 100], bits);
            }
            let mut warm = Vec::new();
            client_frame(&mut warm, true, 0x41, &client_deflate(b"warm"));
            WsCodec::new(64)
                .compressed(Deflate {
                    server_window_bits: 15,
                })
                .feed(&warm, false);
        });
        let baseline = LIVE.load(Ordering::Relaxed);
        let mut codec = WsCodec::new(max);
        if let Some(bits) = case.deflate {
            codec = codec.compressed(Deflate {
                server_window_bits: 8 + bits % 8,
            });
        }
        let mut frames = ServerFrames {
            deflate: case.deflate.map(|bits| 8 + bits % 8),
            ..ServerFrames::default()
        };
        let mut closed_seen = false;
        let mut steps = case.app.iter().cycle();
        let mut at = 0;
        let mut turn = 0;
        let mut largest_piece = 0;
        let budget = case.budget.map_or(usize::MAX, |b| usize::from(b).max(1));
        loop {
            let was_terminated = codec.is_terminated();
            // As the server does: messages held back compressed go through before another read.
            let (incoming, last) = if codec.held_back() {
                (codec.feed_within(&[], false, budget), at == bytes.len())
            } else {
                let size = case
                    .splits
                    .get(turn % case.splits.len().max(1))
                    .map_or(bytes.len(), |&s| usize::from(s).max(1));
                turn += 1;
                let end = (at + size).min(bytes.len());
                let last = end == bytes.len();
                largest_piece = largest_piece.max(end - at);
                let incoming = codec.feed_within(&bytes[at..end], last && case.eof, budget);
                at = end;
                (incoming, last)
            };
            if was_terminated {
                assert!(incoming.is_empty(), "messages after the end");
            }
            if case.deflate.is_some() {
                // Past the budget, one compressed message more at most; plain ones cost what
                // was read (a fragmented one: up to the limit).
                let taken: usize = incoming
                    .iter()
                    .map(|m| match m {
                        WsIncoming::Text(t) => t.len(),
                        WsIncoming::Binary(b) => b.len(),
                        _ => 0,
                    })
                    .sum();
                let bound = budget
                    .saturating_add(2 * max)
                    .saturating_add(largest_piece);
                assert!(taken <= bound, "{taken} bytes decoded for a budget of {budget}");
            }
            for m in incoming {
                assert!(!closed_seen, "a message after the close: {m:?}");
                match &m {
                    WsIncoming::Text(t) => assert!(t.len() <= max, "{} > {max}", t.len()),
                    WsIncoming::Binary(b) => assert!(b.len() <= max, "{} > {max}", b.len()),
                    WsIncoming::Closed { code, .. } => {
                        closed_seen = true;
                        assert!(
                            close_code_may_be_sent(*code) || matches!(code, 1005 | 1006),
                            "the app is told close code {code}"
                        );
                    }
                }
                let message = receive_message(py, m.clone()).expect("receive()'s message");
                let kind: String = message
                    .get_item("type")
                    .unwrap()
                    .unwrap()
                    .extract()
                    .unwrap();
                match m {
                    WsIncoming::Closed { code, .. } => {
                        assert_eq!(kind, "websocket.disconnect");
                        let told: u16 = message
                            .get_item("code")
                            .unwrap()
                            .unwrap()
                            .extract()
                            .unwrap();
                        assert_eq!(told, code);
                        continue;
                    }
                    _ => assert_eq!(kind, "websocket.receive"),
                }
                match steps.next() {
                    Some(AppStep::Echo) => {
                        let send = PyDict::new(py);
                        send.set_item("type", "websocket.send").unwrap();
                        for key in ["text", "bytes"] {
                            if let Some(v) = message.get_item(key).unwrap() {
                                send.set_item(key, v).unwrap();
                            }
                        }
                        let out = app_message("websocket.send", send.as_any()).expect("an echo");
                        if codec.can_send() {
                            codec.send(out).expect("an echo on an open connection");
                        }
                    }
                    Some(AppStep::Close(code, reason)) => {
                        let close = PyDict::new(py);
                        close.set_item("type", "websocket.close").unwrap();
                        close.set_item("code", code).unwrap();
                        close.set_item("reason", reason).unwrap();
                        match app_message("websocket.close", close.as_any()) {
                            Ok(out) => {
                                assert!(
                                    matches!(out, WsOutgoing::Close { code: c, .. } if i32::from(c) == *code)
                                );
                                if codec.can_send() {
                                    codec
                                        .send(out)
                                        .expect("a valid close on an open connection");
                                }
                            }
                            Err(e) => {
                                assert!(e.is_instance_of::<pyo3::exceptions::PyValueError>(py));
                                let valid = u16::try_from(*code).is_ok_and(close_code_may_be_sent)
                                    && reason.len() <= 123;
                                assert!(!valid, "a valid close refused: {code} {reason:?}");
                            }
                        }
                    }
                    Some(AppStep::Ping(payload)) => codec.ping(&payload[..payload.len().min(125)]),
                    Some(AppStep::Nothing) | None => {}
                }
            }
            let out = std::mem::take(codec.output());
            frames.take(&out);
            drop(out);
            // What the codec holds now: its read buffer, the frame and message in progress,
            // the last read's bytes.
            let held = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
            // Inflating, a compressed message is held whole, inflated, and framed again.
            let bound =
                256 * 1024 + if case.deflate.is_some() { 6 } else { 3 } * max + 2 * largest_piece;
            assert!(
                held <= bound,
                "the codec holds {held} bytes (bound {bound})"
            );
            if last && !codec.held_back() {
                break;
            }
        }
    });
});
