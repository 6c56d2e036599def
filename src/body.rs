//! The request body as the server received it: a sequence of memory regions and file ranges.
//!
//! The server keeps the memory and the file descriptors valid until the request is finished
//! (see [`Body::from_segments`]); the core never frees them.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// One contiguous piece of the body.
#[derive(Debug, Clone, Copy)]
pub enum Segment {
    /// Bytes in server-owned memory.
    Memory { ptr: *const u8, len: usize },
    /// A range of a server-owned file (a request body spilled to a temp file).
    File { fd: RawFd, offset: u64, len: u64 },
}

impl Segment {
    fn len(&self) -> u64 {
        match *self {
            Segment::Memory { len, .. } => len as u64,
            Segment::File { len, .. } => len,
        }
    }
}

/// A request body: the segments in order, or owned bytes (tests, small bodies).
#[derive(Debug, Default)]
pub struct Body {
    segments: Vec<Segment>,
    owned: Vec<u8>,
    len: u64,
}

// SAFETY: the segments point at memory and descriptors that the server keeps alive and unchanged
// for as long as the request runs; `from_segments` makes the caller promise exactly that.
unsafe impl Send for Body {}
// SAFETY: a body is only ever read (copying out of the regions, `pread` on the descriptors).
unsafe impl Sync for Body {}

/// Largest file read done in one go while searching for a line end.
const FILE_PEEK: usize = 64 * 1024;

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::default()
    }

    /// A body held in owned memory.
    pub fn from_vec(bytes: Vec<u8>) -> Body {
        Body {
            len: bytes.len() as u64,
            owned: bytes,
            segments: Vec::new(),
        }
    }

    /// A body over server-owned memory and files.
    ///
    /// # Safety
    /// Every memory segment must stay readable and every descriptor open, unchanged, until the
    /// request that owns this body has finished running (the input object is detached then).
    pub unsafe fn from_segments(segments: Vec<Segment>) -> Body {
        let len = segments.iter().map(Segment::len).sum();
        Body {
            segments,
            owned: Vec::new(),
            len,
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes starting at `pos` into `out` (up to its length); returns how many were
    /// copied, 0 only at the end of the body. (The tests' reader: servers read into a new
    /// `bytes` object's buffer with [`Body::read_at_uninit`].)
    #[cfg(test)]
    pub(crate) fn read_at(&self, pos: u64, out: &mut [u8]) -> io::Result<usize> {
        self.read_at_uninit(pos, as_uninit(out))
    }

    /// Copies bytes starting at `pos` into memory that need not be initialised (a new Python `bytes`
    /// object's buffer: zeroing it first would cost a second pass over the body). The first
    /// `n` bytes of `out` are initialised when it returns `Ok(n)`.
    pub fn read_at_uninit(&self, mut pos: u64, out: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        if !self.owned.is_empty() || self.segments.is_empty() {
            let start = (pos as usize).min(self.owned.len());
            let n = out.len().min(self.owned.len() - start);
            copy_to(&self.owned[start..start + n], &mut out[..n]);
            return Ok(n);
        }
        let mut done = 0;
        for seg in &self.segments {
            let seg_len = seg.len();
            if pos >= seg_len {
                pos -= seg_len;
                continue;
            }
            if done == out.len() {
                break;
            }
            let want = ((seg_len - pos) as usize).min(out.len() - done);
            let dst = &mut out[done..done + want];
            match *seg {
                Segment::Memory { ptr, .. } => {
                    // SAFETY: `from_segments` guarantees the region is live for `seg_len` bytes and
                    // `pos + want <= seg_len`.
                    let src = unsafe { std::slice::from_raw_parts(ptr.add(pos as usize), want) };
                    copy_to(src, dst);
                }
                Segment::File { fd, offset, .. } => read_file_exact(fd, offset + pos, dst)?,
            }
            done += want;
            pos = 0;
        }
        Ok(done)
    }

    /// The bytes at `pos` that can be seen without copying (a memory segment), or a copy of up
    /// to `limit` bytes from a file segment. Empty at the end of the body.
    pub fn peek_at(&self, mut pos: u64, limit: usize) -> io::Result<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        if !self.owned.is_empty() || self.segments.is_empty() {
            let start = (pos as usize).min(self.owned.len());
            let end = self.owned.len().min(start.saturating_add(limit));
            return Ok(Cow::Borrowed(&self.owned[start..end]));
        }
        for seg in &self.segments {
            let seg_len = seg.len();
            if pos >= seg_len {
                pos -= seg_len;
                continue;
            }
            let want = ((seg_len - pos) as usize).min(limit);
            return Ok(match *seg {
                // SAFETY: as in `read_at`: the region is live and `pos + want <= seg_len`.
                Segment::Memory { ptr, .. } => Cow::Borrowed(unsafe {
                    std::slice::from_raw_parts(ptr.add(pos as usize), want)
                }),
                Segment::File { fd, offset, .. } => {
                    let mut buf = vec![0u8; want.min(FILE_PEEK)];
                    read_file_exact(fd, offset + pos, as_uninit(&mut buf))?;
                    Cow::Owned(buf)
                }
            });
        }
        Ok(Cow::Borrowed(&[]))
    }
}

/// Initialised bytes seen as a destination that the readers here fill.
fn as_uninit(bytes: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has `u8`'s layout, and the readers here write only initialised
    // bytes, so the slice stays valid `[u8]`.
    unsafe { &mut *(bytes as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

fn copy_to(src: &[u8], dst: &mut [MaybeUninit<u8>]) {
    let dst = &mut dst[..src.len()];
    // SAFETY: both are valid for `src.len()` bytes, and a shared source cannot overlap an
    // exclusive destination.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast(), src.len()) };
}

fn read_file_exact(fd: RawFd, mut offset: u64, mut buf: &mut [MaybeUninit<u8>]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid writable region of `buf.len()` bytes; `fd` is open per the
        // `from_segments` contract.
        let n = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request body temp file is shorter than the body",
            ));
        }
        offset += n as u64;
        buf = &mut buf[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_across_memory_and_file_segments() {
        let a = b"hello ".to_vec();
        let mut file = tempfile();
        file.write_all(b"xxworld\n").unwrap();
        let c = b"again".to_vec();
        // SAFETY: the vectors and the file outlive the body in this test.
        let body = unsafe {
            Body::from_segments(vec![
                Segment::Memory {
                    ptr: a.as_ptr(),
                    len: a.len(),
                },
                Segment::File {
                    fd: file.as_raw_fd(),
                    offset: 2,
                    len: 6,
                },
                Segment::Memory {
                    ptr: c.as_ptr(),
                    len: c.len(),
                },
            ])
        };
        assert_eq!(body.len(), 17);
        let mut out = vec![0u8; 64];
        let n = body.read_at(0, &mut out).unwrap();
        assert_eq!(&out[..n], b"hello world\nagain");
        let n = body.read_at(4, &mut out[..5]).unwrap();
        assert_eq!(&out[..n], b"o wor");
        assert_eq!(body.read_at(17, &mut out).unwrap(), 0);
        assert_eq!(&*body.peek_at(6, 100).unwrap(), b"world\n");
        assert_eq!(&*body.peek_at(12, 2).unwrap(), b"ag");
        assert!(body.peek_at(17, 10).unwrap().is_empty());
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("ngx-wsgi-body-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
