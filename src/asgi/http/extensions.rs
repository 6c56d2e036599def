//! The response extensions of an ASGI HTTP exchange: `http.response.trailers` (not offered;
//! ignored or dropped), the internal redirect an `X-Accel-Redirect` head asks the server for, and
//! `http.response.pathsend` (the server sends the file).

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::{get_opt, HttpEnd, HttpExchange, Response};
use crate::asgi::message_values::header_pair;
use crate::file_wrapper::FileRange;
use crate::response::ResponseHead;

impl HttpExchange {
    /// `http.response.trailers`: this server does not offer the extension (no
    /// `http.response.trailers` in the scope's `extensions`), so it ignores `trailers: true` on
    /// the start, as uvicorn does (apps such as ASGIWebDAV set it on every response), and drops
    /// trailers an app sends anyway, once the body is complete.
    pub(super) fn trailers(&mut self, message: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Some(headers) = get_opt(message, pyo3::intern!(message.py(), "headers"))? {
            for item in headers.try_iter()? {
                header_pair(&item?)?;
            }
        }
        match self.response {
            Response::Done => Ok(()),
            _ => Err(PyRuntimeError::new_err(
                "http.response.trailers sent before the response body was complete",
            )),
        }
    }

    /// Whether the server took the response to answer in the app's place: the first time, hands
    /// it the head when the head has an `X-Accel-Redirect` or a status the server answers itself
    /// (before any body piece went out).
    pub(super) fn take_server_answer(&mut self) -> bool {
        if self.response == Response::Started
            && self.head.as_ref().is_some_and(ResponseHead::body_unused)
        {
            if let Some(head) = self.head.take() {
                match self.server.answer_in_place(head) {
                    Ok(()) => self.response = Response::AnsweredByServer,
                    Err(head) => self.head = Some(head),
                }
            }
        }
        self.response == Response::AnsweredByServer
    }

    /// `http.response.pathsend`: the response's body is a file, which the server sends.
    pub(super) fn pathsend(&mut self, message: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.scope.no_pathsend {
            return Err(PyValueError::new_err(
                "http.response.pathsend is not offered here (asgi_pathsend off): the scope's \
                 extensions do not have it",
            ));
        }
        if self.response != Response::Started {
            return Err(PyRuntimeError::new_err(
                "http.response.pathsend must follow http.response.start, before any body",
            ));
        }
        if self.gone || self.finished {
            return Err(Self::gone_error());
        }
        if self.take_server_answer() {
            self.response = Response::Done;
            self.finish(HttpEnd::Complete);
            return Ok(());
        }
        let path = message
            .get_item("path")
            .map_err(|_| PyValueError::new_err("http.response.pathsend without a path"))?;
        let path: std::path::PathBuf = path
            .extract()
            .map_err(|_| PyTypeError::new_err("http.response.pathsend: path must be a str"))?;
        // The extension asks for an absolute path, but Starlette's FileResponse passes the path
        // it was given (`FileResponse("image.png")`), which its other servers open from their
        // current directory: so does this one (the worker's, nginx's `working_directory`).
        let path = if path.is_absolute() {
            path
        } else {
            std::env::current_dir()
                .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("getcwd(): {e}")))?
                .join(path)
        };
        // Non-blocking: the open of a FIFO with no writer would hold the event loop (and, with
        // the GIL, every Python thread of the worker) until one came; it is refused below. A
        // regular file's reads ignore the flag. The GIL is let go for a slow file system.
        let file = message
            .py()
            .detach(|| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
            })
            .map_err(|e| {
                pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", path.display()))
            })?;
        let meta = file.metadata().map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", path.display()))
        })?;
        if !meta.is_file() {
            return Err(PyValueError::new_err(format!(
                "http.response.pathsend: {} is not a regular file",
                path.display()
            )));
        }
        // procfs files say 0 bytes, sysfs ones a page: what they have is read now (a file
        // that is empty reads as empty at once) and sent from memory.
        let (file, size) = if crate::file_wrapper::size_says_nothing(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            meta.len(),
        ) {
            message
                .py()
                .detach(|| crate::file_wrapper::unsized_file_in_memory(file))
                .map_err(|e| {
                    pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", path.display()))
                })?
        } else {
            (file, meta.len())
        };
        let len = self.declared.map_or(size, |d| d.min(size));
        let Some(head) = self.head.take() else {
            return Err(PyRuntimeError::new_err("no response head"));
        };
        self.produced = len;
        self.response = Response::Done;
        self.server.send_file(
            head,
            FileRange {
                fd: file.into(),
                offset: 0,
                len,
                label: std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                    .unwrap_or_else(|_| c"http.response.pathsend".to_owned()),
            },
        );
        let end = match self.declared {
            Some(declared) if len < declared && !self.bodiless => {
                self.log_error(
                    &format!("the file of http.response.pathsend has {len} bytes for a content-length of {declared}; the connection was cut"),
                    "",
                );
                HttpEnd::Truncated
            }
            _ => HttpEnd::Complete,
        };
        self.finish(end);
        Ok(())
    }
}
