//! `wsgi.input`: a read-only byte stream over the request body the server received.
//!
//! The server has the whole body (or reads it as it arrives, later), so a read never waits for the
//! client and never blocks past the end of the body: it returns `b""` there.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::body::Body;

#[pyclass(module = "ngx_wsgi", name = "Input")]
pub struct Input {
    /// `None` once the request has finished: the server's buffers are gone.
    body: Option<Body>,
    pos: u64,
}

impl Input {
    pub fn new(body: Body) -> Self {
        Input {
            body: Some(body),
            pos: 0,
        }
    }

    /// Cuts the stream off from the server's memory; later reads raise `ValueError`.
    pub fn detach(&mut self) {
        self.body = None;
    }

    fn body(&self) -> PyResult<&Body> {
        self.body
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("wsgi.input read after the request finished"))
    }

    fn remaining(&self) -> PyResult<u64> {
        Ok(self.body()?.len().saturating_sub(self.pos))
    }

    /// A size argument as PEP 3333 and `io` read it: `None` or negative means "all".
    fn limit(size: Option<i64>, remaining: u64) -> u64 {
        match size {
            Some(n) if n >= 0 => (n as u64).min(remaining),
            _ => remaining,
        }
    }

    fn read_line<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let limit = Self::limit(size, self.remaining()?);
        let body = self.body()?;
        let mut line: Vec<u8> = Vec::new();
        let mut pos = self.pos;
        let end = self.pos + limit;
        while pos < end {
            let chunk = body
                .peek_at(pos, (end - pos).min(usize::MAX as u64) as usize)
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            if chunk.is_empty() {
                break;
            }
            let (take, done) = match memchr(b'\n', &chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if line.is_empty() && done {
                // The whole line sits in one chunk: no intermediate copy.
                let bytes = PyBytes::new(py, &chunk[..take]);
                self.pos = pos + take as u64;
                return Ok(bytes);
            }
            line.extend_from_slice(&chunk[..take]);
            pos += take as u64;
            if done {
                break;
            }
        }
        self.pos = pos;
        Ok(PyBytes::new(py, &line))
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size = None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let n = Self::limit(size, self.remaining()?) as usize;
        let pos = self.pos;
        let body = self.body()?;
        let bytes = PyBytes::new_with(py, n, |buf| {
            let got = body
                .read_at(pos, buf)
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            if got != buf.len() {
                return Err(PyOSError::new_err("request body ended early"));
            }
            Ok(())
        })?;
        self.pos += n as u64;
        Ok(bytes)
    }

    #[pyo3(signature = (size = None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.read_line(py, size)
    }

    #[pyo3(signature = (hint = None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let lines = PyList::empty(py);
        let mut total = 0u64;
        loop {
            let line = self.read_line(py, None)?;
            let len = line.as_bytes().len() as u64;
            if len == 0 {
                break;
            }
            lines.append(line)?;
            total += len;
            if matches!(hint, Some(h) if h > 0 && total >= h as u64) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.read_line(py, None)?;
        Ok(if line.as_bytes().is_empty() {
            None
        } else {
            Some(line)
        })
    }

    fn readable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;

    fn input<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, Input> {
        Bound::new(py, Input::new(Body::from_vec(data.to_vec()))).unwrap()
    }

    fn call(obj: &Bound<'_, Input>, code: &str) -> Vec<u8> {
        let py = obj.py();
        let locals = pyo3::types::PyDict::new(py);
        locals.set_item("f", obj).unwrap();
        let code = std::ffi::CString::new(code).unwrap();
        py.eval(&code, None, Some(&locals))
            .unwrap()
            .extract()
            .unwrap()
    }

    #[test]
    fn read_sizes_and_end_of_body() {
        with_python(|py| {
            let f = input(py, b"abcdef");
            assert_eq!(call(&f, "f.read(2)"), b"ab");
            assert_eq!(call(&f, "f.read(-1)"), b"cdef");
            assert_eq!(call(&f, "f.read()"), b"");
            assert_eq!(call(&f, "f.read(10)"), b"");
        });
    }

    #[test]
    fn lines_iteration_and_readlines() {
        with_python(|py| {
            let f = input(py, b"one\ntwo\nthree");
            assert_eq!(call(&f, "f.readline(2)"), b"on");
            assert_eq!(call(&f, "f.readline()"), b"e\n");
            assert_eq!(call(&f, "b'|'.join(f.readlines())"), b"two\n|three");
            let f = input(py, b"a\nb\n");
            assert_eq!(call(&f, "b''.join(x.upper() for x in f)"), b"A\nB\n");
        });
    }

    #[test]
    fn detached_input_refuses_reads() {
        with_python(|py| {
            let f = input(py, b"abc");
            f.borrow_mut().detach();
            let err = f.call_method0("read").unwrap_err();
            assert!(err.is_instance_of::<PyValueError>(py));
        });
    }
}
