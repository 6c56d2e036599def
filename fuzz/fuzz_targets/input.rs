//! `wsgi.input` over any split of the body into memory and file segments, and over a streamed
//! body delivered in any chunking, against `io.BytesIO` over the same bytes: every sequence of
//! `read`, `readline`, `readlines` and iteration gives the same results, and a read after the
//! request ended fails like a read of a closed `BytesIO` (`ValueError`).
#![no_main]

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ngx_wsgi::input::Input;
use ngx_wsgi::{Body, BodySource, RequestBody, Segment};
use ngx_wsgi_fuzz::with_python;
use pyo3::prelude::*;

#[derive(Arbitrary, Debug)]
enum Op {
    Read(Option<i16>),
    ReadLine(Option<i16>),
    ReadLines(Option<i16>),
    Next,
    /// The request ends: its input gate closes, the server's buffers are gone.
    Detach,
}

#[derive(Arbitrary, Debug)]
enum Layout {
    /// The body in owned memory.
    Owned,
    /// Segments of these lengths (cycled; 0 allowed), in a file when the flag says so.
    Segments(Vec<(u8, bool)>),
    /// Delivered as it arrives, in pieces of these sizes (cycled).
    Streamed(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Case {
    body: Vec<u8>,
    layout: Layout,
    /// Bytes before each file segment's data in the file.
    file_gap: u8,
    ops: Vec<Op>,
}

/// A body source handing out pieces of the given sizes (never more than asked for).
struct Pieces {
    rest: Mutex<(VecDeque<u8>, Vec<u8>, usize)>,
    cancelled: AtomicBool,
}

impl BodySource for Pieces {
    fn read(&self, max: usize) -> std::io::Result<Vec<u8>> {
        // The input's gate refuses reads after the request's end before they get here.
        assert!(
            !self.cancelled.load(Ordering::SeqCst),
            "read after the request ended"
        );
        let mut guard = self.rest.lock().unwrap();
        let (data, sizes, turn) = &mut *guard;
        let size = if sizes.is_empty() {
            1
        } else {
            usize::from(sizes[*turn % sizes.len()]).max(1)
        };
        *turn += 1;
        let n = size.min(max).min(data.len());
        Ok(data.drain(..n).collect())
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

/// The memory and the file a segmented body points into; they outlive the body.
struct Backing {
    _pieces: Vec<Vec<u8>>,
    _file: Option<std::fs::File>,
}

fn segmented(body: &[u8], lengths: &[(u8, bool)], gap: u8) -> (Body, Backing) {
    // SAFETY: plain syscall; the descriptor is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"ngx-wsgi-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut pieces = Vec::new();
    let mut segments = Vec::new();
    let mut at = 0;
    let mut file_len = 0u64;
    let mut turn = 0;
    while at < body.len() {
        let (len, in_file) = lengths[turn % lengths.len()];
        turn += 1;
        let len = usize::from(len).min(body.len() - at);
        let bytes = &body[at..at + len];
        at += len;
        if in_file {
            file.write_all(&vec![b'#'; usize::from(gap)]).unwrap();
            file_len += u64::from(gap);
            file.write_all(bytes).unwrap();
            segments.push(Segment::File {
                fd: file.as_raw_fd(),
                offset: file_len,
                len: len as u64,
            });
            file_len += len as u64;
        } else {
            let piece = bytes.to_vec();
            segments.push(Segment::Memory {
                ptr: piece.as_ptr(),
                len: piece.len(),
            });
            pieces.push(piece);
        }
    }
    // SAFETY: every memory segment points into `pieces` and every file segment into `file`,
    // both returned with the body and dropped after it.
    let body = unsafe { Body::from_segments(segments) };
    (
        body,
        Backing {
            _pieces: pieces,
            _file: Some(file),
        },
    )
}

fuzz_target!(|case: Case| {
    let (body, _backing) = match &case.layout {
        Layout::Owned => (
            RequestBody::Buffered(Body::from_vec(case.body.clone())),
            None,
        ),
        Layout::Segments(lengths) if !lengths.is_empty() && lengths.iter().any(|l| l.0 > 0) => {
            let (body, backing) = segmented(&case.body, lengths, case.file_gap);
            assert_eq!(body.len(), case.body.len() as u64);
            (RequestBody::Buffered(body), Some(backing))
        }
        Layout::Segments(_) => return,
        Layout::Streamed(sizes) => {
            let source = Pieces {
                rest: Mutex::new((case.body.iter().copied().collect(), sizes.clone(), 0)),
                cancelled: AtomicBool::new(false),
            };
            (RequestBody::Streamed(Arc::new(source)), None)
        }
    };
    with_python(|py| {
        let (input, gate) = Input::new(body);
        let ours = Bound::new(py, input).unwrap();
        let io = py.import("io").unwrap();
        let reference = io
            .call_method1("BytesIO", (pyo3::types::PyBytes::new(py, &case.body),))
            .unwrap();
        for op in &case.ops {
            if let Op::Detach = op {
                gate.close(py);
                reference.call_method0("close").unwrap();
                continue;
            }
            let a = apply(&ours, op);
            let b = apply(&reference, op);
            assert_eq!(a, b, "{op:?} on {case:?}");
        }
    });
});

/// What one operation returned (its value's repr) or the name of the exception it raised.
fn apply(f: &Bound<'_, PyAny>, op: &Op) -> Result<String, String> {
    let py = f.py();
    let result = match *op {
        Op::Read(n) => f.call_method1("read", (n,)),
        Op::ReadLine(n) => f.call_method1("readline", (n,)),
        Op::ReadLines(n) => f.call_method1("readlines", (n,)),
        Op::Next => py
            .import("builtins")
            .unwrap()
            .call_method1("next", (f, "end")),
        Op::Detach => unreachable!(),
    };
    match result {
        Ok(v) => Ok(v.repr().unwrap().to_string()),
        Err(e) => Err(e.get_type(py).name().unwrap().to_string()),
    }
}
