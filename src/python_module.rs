//! `import ngx_wsgi`: the module's exceptions by name, for an app that wants to tell them apart
//! (`except ngx_wsgi.TimeoutExit`, `except ngx_wsgi.ClientDisconnected`) or to know that it runs
//! here (`try: import ngx_wsgi`), as apps do with `mod_wsgi` and `uwsgi`. Their classes say
//! `ngx_wsgi` as their module, so that tracebacks and pickling name them by where they are found.

use pyo3::prelude::*;
use pyo3::types::PyModule;

/// Puts the `ngx_wsgi` module in `sys.modules` (an app that ships its own `ngx_wsgi` on its path
/// is not shadowed by it, as imports look in `sys.modules` first: ours is the one it gets).
pub(crate) fn register(py: Python<'_>) -> PyResult<()> {
    let module = PyModule::new(py, "ngx_wsgi")?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add(
        "ClientDisconnected",
        py.get_type::<crate::response::ClientDisconnected>(),
    )?;
    module.add("TimeoutError", crate::timeout_exit::timeout_error(py)?)?;
    module.add("TimeoutExit", crate::timeout_exit::timeout_exit(py)?)?;
    module.add(
        "__all__",
        ("ClientDisconnected", "TimeoutError", "TimeoutExit"),
    )?;
    // `importlib.util.find_spec("ngx_wsgi")`, the usual "do I run under it" test, reads it.
    let spec = py
        .import("importlib.machinery")?
        .getattr("ModuleSpec")?
        .call1(("ngx_wsgi", py.None()))?;
    module.setattr("__spec__", spec)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("ngx_wsgi", module)
}

#[cfg(test)]
mod tests {
    use crate::testing::with_python;
    use pyo3::types::PyDict;

    #[test]
    fn an_app_imports_the_exceptions_it_is_given() {
        // The interpreter's start registered the module.
        with_python(|py| {
            let globals = PyDict::new(py);
            py.run(
                c"
import importlib.util
import pickle
import ngx_wsgi
assert importlib.util.find_spec('ngx_wsgi').name == 'ngx_wsgi'
from ngx_wsgi import ClientDisconnected, TimeoutError as Deadline, TimeoutExit
assert issubclass(ClientDisconnected, OSError)
assert issubclass(Deadline, TimeoutError) and Deadline is not TimeoutError
assert issubclass(TimeoutExit, BaseException) and not issubclass(TimeoutExit, Exception)
for cls in (ClientDisconnected, Deadline, TimeoutExit):
    assert getattr(ngx_wsgi, cls.__name__) is cls, cls
    assert type(pickle.loads(pickle.dumps(cls('x')))) is cls, cls
",
                Some(&globals),
                None,
            )
            .map_err(|e| e.display(py))
            .unwrap();
        });
    }
}
