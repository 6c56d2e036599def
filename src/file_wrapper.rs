//! `wsgi.file_wrapper`: wraps a file-like object as an iterable of blocks (PEP 3333 "Optional
//! Platform-Specific File Handling"). Servers may recognise it and send the file directly.

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
    /// What the server's log lines about reading it name it.
    pub label: &'static str,
}

/// The file behind `iterable` when it is a `wsgi.file_wrapper` over a regular file with a real
/// descriptor: from the file's current position to its end, at most `limit` bytes.
pub(crate) fn file_range(iterable: &Bound<'_, PyAny>, limit: Option<u64>) -> Option<FileRange> {
    let wrapper = iterable.cast::<FileWrapper>().ok()?;
    let filelike = wrapper.borrow().filelike.clone_ref(iterable.py());
    let filelike = filelike.bind(iterable.py());
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
        label: "wsgi.file_wrapper",
    })
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
