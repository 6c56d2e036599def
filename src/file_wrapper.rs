//! `wsgi.file_wrapper`: wraps a file-like object as an iterable of blocks (PEP 3333 "Optional
//! Platform-Specific File Handling"). Servers may recognise it and send the file directly.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use pyo3::prelude::*;

/// A response body that is a byte range of a regular file: the server can send it itself
/// (`sendfile`) instead of copying it through Python.
#[derive(Debug)]
pub struct FileRange {
    /// A duplicate of the app's descriptor, owned by the response (the app may close its file).
    pub fd: OwnedFd,
    pub offset: u64,
    pub len: u64,
    /// What the server's log lines about reading it name it (the file's path where known): a C
    /// string, since nginx prints a file's name with `%s` (its alert about a file that shrank
    /// while being sent, for one).
    pub label: CString,
}

/// The file behind `iterable` when it is a `wsgi.file_wrapper` over a regular file with a real
/// descriptor: from the file's current position to its end, at most `limit` bytes.
pub(crate) fn file_range(iterable: &Bound<'_, PyAny>, limit: Option<u64>) -> Option<FileRange> {
    let wrapper = iterable.cast::<FileWrapper>().ok()?;
    let filelike = wrapper.borrow().filelike.clone_ref(iterable.py());
    let filelike = plain_file(filelike.bind(iterable.py()))?;
    let fd: i32 = filelike.call_method0("fileno").ok()?.extract().ok()?;
    // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`; `fd` is the app's open descriptor (a bad one fails).
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
        return None;
    }
    let position: u64 = match filelike.call_method0("tell") {
        Ok(pos) => pos.extract().ok()?,
        // SAFETY: lseek on the app's descriptor only reads its offset.
        Err(_) => u64::try_from(unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }).ok()?,
    };
    let size = u64::try_from(st.st_size).ok()?;
    if size_says_nothing(fd, size) {
        // Python's iteration reads what the file has.
        return None;
    }
    let mut len = size.saturating_sub(position);
    if let Some(limit) = limit {
        len = len.min(limit);
    }
    // SAFETY: duplicates an open descriptor; the duplicate is owned by the returned value.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    Some(FileRange {
        // SAFETY: `dup` is a fresh descriptor nobody else owns.
        fd: unsafe { OwnedFd::from_raw_fd(dup) },
        offset: position,
        len,
        label: path_of(dup).unwrap_or_else(|| c"wsgi.file_wrapper".to_owned()),
    })
}

/// The path the kernel knows an open file by (an operator looks for that file when the log says
/// it shrank while being sent); `None` where it has none to give.
fn path_of(fd: std::os::fd::RawFd) -> Option<CString> {
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    use std::os::unix::ffi::OsStringExt;
    CString::new(path.into_os_string().into_vec()).ok()
}

/// The file whose descriptor holds what `filelike`'s `read()` gives: `filelike` itself when it
/// is a binary file (`FileIO`, a subclass of it that reads as it does, or a buffered reader
/// over one, of these very types: a subclass may read otherwise), or the one a proxy holds in
/// `.file` (tempfile's named files, Django's `File`). Other streams with a `fileno()` transform
/// its bytes (`gzip.open`, `bz2`, `lzma`, a text file) or may name another file: the server
/// would send the wrong bytes, so they are iterated.
fn plain_file<'py>(filelike: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = filelike.py();
    let find = || -> PyResult<Option<Bound<'py, PyAny>>> {
        let io = py.import(pyo3::intern!(py, "io"))?;
        let file_io = io.getattr(pyo3::intern!(py, "FileIO"))?;
        let buffered = [
            io.getattr(pyo3::intern!(py, "BufferedReader"))?,
            io.getattr(pyo3::intern!(py, "BufferedRandom"))?,
        ];
        let stream = io.getattr(pyo3::intern!(py, "IOBase"))?;
        let mut object = filelike.clone();
        // A proxy of a proxy at most (Django's FieldFile over a File over the file).
        for _ in 0..3 {
            let kind = object.get_type();
            if kind.is(&file_io) || reads_as_file_io(&object, &file_io)? {
                return Ok(Some(object));
            }
            if buffered.iter().any(|b| kind.is(b)) {
                let raw = object.getattr(pyo3::intern!(py, "raw"))?;
                return Ok(raw.get_type().is(&file_io).then_some(object));
            }
            if object.is_instance(&stream)? {
                return Ok(None);
            }
            object = object.getattr(pyo3::intern!(py, "file"))?;
        }
        Ok(None)
    };
    find().ok().flatten()
}

/// Whether `object` is of a subclass of `FileIO` that reads as `FileIO` does (Zope's
/// `filestream_iterator`, which only makes it iterable in blocks of its own size): neither its
/// class nor the object replaces a reading method.
fn reads_as_file_io(object: &Bound<'_, PyAny>, file_io: &Bound<'_, PyAny>) -> PyResult<bool> {
    let kind = object.get_type();
    if !kind.is_subclass(file_io)? {
        return Ok(false);
    }
    let own = object.getattr(pyo3::intern!(object.py(), "__dict__")).ok();
    for name in ["read", "readinto", "readall", "readline", "readlines"] {
        if !kind.getattr(name)?.is(&file_io.getattr(name)?) {
            return Ok(false);
        }
        if let Some(own) = &own {
            if own.contains(name)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether a regular file's size says nothing of what it has: procfs files say 0 bytes, and
/// those of the kernel's other pseudo-filesystems (sysfs, cgroup, debugfs...) a page, whatever
/// they hold. Sent with that size, they would be cut short (nginx's read comes up short).
pub fn size_says_nothing(fd: std::os::fd::RawFd, size: u64) -> bool {
    if size == 0 {
        return true;
    }
    // SAFETY: an all-zero statfs is a valid buffer for fstatfs to fill.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into `fs`; a bad descriptor fails.
    if unsafe { libc::fstatfs(fd, &mut fs) } != 0 {
        return false;
    }
    [
        libc::PROC_SUPER_MAGIC,
        libc::SYSFS_MAGIC,
        libc::CGROUP_SUPER_MAGIC,
        libc::CGROUP2_SUPER_MAGIC,
        libc::DEBUGFS_MAGIC,
        libc::TRACEFS_MAGIC,
        libc::SECURITYFS_MAGIC,
    ]
    .iter()
    // The two types differ from one libc target to another (long, int, __fsword_t).
    .any(|&magic| {
        #[allow(clippy::unnecessary_cast)]
        let same = fs.f_type as i64 == magic as i64;
        same
    })
}

/// The most read from a file whose size says nothing.
const UNSIZED_FILE_CAP: u64 = 16 << 20;

/// What a regular file whose size says nothing has ([`size_says_nothing`]), read now into an
/// anonymous file that the server can send as it sends any file; with its length.
pub fn unsized_file_in_memory(file: std::fs::File) -> std::io::Result<(std::fs::File, u64)> {
    use std::io::{Read, Write};
    let mut data = Vec::new();
    // Some say 0 and never end (`/proc/self/pagemap`): beyond the cap it is an error.
    file.take(UNSIZED_FILE_CAP + 1).read_to_end(&mut data)?;
    if data.len() as u64 > UNSIZED_FILE_CAP {
        return Err(std::io::Error::other(format!(
            "its size says nothing and it has more than {} MiB",
            UNSIZED_FILE_CAP >> 20
        )));
    }
    // SAFETY: the name is a C string; the new descriptor is owned by the returned file.
    let fd = unsafe { libc::memfd_create(c"pathsend".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let mut memory = unsafe { std::fs::File::from_raw_fd(fd) };
    memory.write_all(&data)?;
    Ok((memory, data.len() as u64))
}

#[pyclass(module = "ngx_wsgi", name = "FileWrapper")]
pub struct FileWrapper {
    #[pyo3(get)]
    filelike: Py<PyAny>,
    #[pyo3(get)]
    block_size: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, block_size = 8192))]
    fn new(filelike: Py<PyAny>, block_size: usize) -> Self {
        FileWrapper {
            filelike,
            block_size: block_size.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .filelike
            .bind(py)
            .call_method1("read", (self.block_size,))?;
        Ok(if block.is_truthy()? {
            Some(block)
        } else {
            None
        })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let filelike = self.filelike.bind(py);
        if filelike.hasattr("close")? {
            filelike.call_method0("close")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_file_that_says_it_is_empty_is_sent_with_what_it_has() {
        let expected = std::fs::read("/proc/version").unwrap();
        assert!(!expected.is_empty());
        let proc_file = std::fs::File::open("/proc/version").unwrap();
        assert_eq!(
            proc_file.metadata().unwrap().len(),
            0,
            "procfs says 0 bytes"
        );
        let (mut memory, len) = unsized_file_in_memory(proc_file).unwrap();
        assert_eq!(len, expected.len() as u64);
        let mut sent = Vec::new();
        use std::io::Seek;
        memory.rewind().unwrap();
        memory.read_to_end(&mut sent).unwrap();
        assert_eq!(sent, expected);
        let empty = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(unsized_file_in_memory(empty).unwrap().1, 0);
    }
}
