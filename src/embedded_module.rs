//! A Python module of the server's own, made from source text compiled into the crate, once per
//! interpreter, the first time it is asked for.

use std::ffi::CStr;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

pub(crate) struct EmbeddedModule {
    code: &'static CStr,
    file_name: &'static CStr,
    name: &'static CStr,
    made: PyOnceLock<Py<PyModule>>,
}

impl EmbeddedModule {
    pub(crate) const fn new(
        code: &'static CStr,
        file_name: &'static CStr,
        name: &'static CStr,
    ) -> Self {
        EmbeddedModule {
            code,
            file_name,
            name,
            made: PyOnceLock::new(),
        }
    }

    /// The module, made on the first call.
    pub(crate) fn get<'py>(&'py self, py: Python<'py>) -> PyResult<&'py Bound<'py, PyModule>> {
        self.made
            .get_or_try_init(py, || {
                PyModule::from_code(py, self.code, self.file_name, self.name).map(Bound::unbind)
            })
            .map(|m| m.bind(py))
    }
}
