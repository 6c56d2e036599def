//! Which ASGI an app speaks. Only ASGI 3 (`app(scope, receive, send)` returning an awaitable) is
//! served; an ASGI 2 app (`app(scope)` returning the coroutine function of a connection, often a
//! class instantiated with the scope) is refused when the configuration is checked, instead of
//! failing on every request.

use pyo3::prelude::*;

const CHECK: &std::ffi::CStr = c"
import inspect

def _asgi_version(app):
    if inspect.isclass(app):
        # A class called with (scope, receive, send) whose instances are awaitable is ASGI 3;
        # one instantiated with the scope alone is the ASGI 2 'double callable'.
        return 3 if hasattr(app, '__await__') else 2
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return 3  # a builtin or C callable: nothing to look at
    try:
        signature.bind(None, None, None)
        return 3
    except TypeError:
        pass
    try:
        signature.bind(None)
        return 2
    except TypeError:
        return 0

def _is_asgi(app):
    # A coroutine function, or an instance whose __call__ is one (Starlette, FastAPI, Quart,
    # Django's ASGIHandler), never answers a WSGI call. A class is not looked at: a WSGI app may
    # be one (instantiated with environ and start_response).
    if inspect.isclass(app):
        return False
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
        getattr(type(app), '__call__', None))
";

/// Calls the check's function `name` on `app`.
fn ask<'py, T: for<'a> FromPyObject<'a, 'py>>(app: &Bound<'py, PyAny>, name: &str) -> PyResult<T> {
    let py = app.py();
    let globals = pyo3::types::PyDict::new(py);
    py.run(CHECK, Some(&globals), None)?;
    globals
        .get_item(name)?
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err(format!("no {name}")))?
        .call1((app,))?
        .extract()
        .map_err(Into::into)
}

/// Ok when `app`, served by `wsgi_app`, is not plainly an ASGI application; else why not.
pub fn check_not_asgi(app: &Bound<'_, PyAny>) -> Result<(), String> {
    match ask::<bool>(app, "_is_asgi") {
        Ok(true) => Err(
            "is an ASGI application (a coroutine function, called as app(scope, \
                         receive, send)): serve it with asgi_app"
                .into(),
        ),
        // What cannot be looked at is left to its first request.
        _ => Ok(()),
    }
}

/// Ok when `app` can be an ASGI 3 application; else why not.
pub fn check(app: &Bound<'_, PyAny>) -> Result<(), String> {
    let py = app.py();
    let version = ask::<i32>(app, "_asgi_version").map_err(|e| crate::traceback::format(py, &e))?;
    match version {
        3 => Ok(()),
        2 => Err(
            "is an ASGI 2 application (called with the scope alone, or a class instantiated \
                  with it); asgi_app serves ASGI 3 applications, app(scope, receive, send): wrap \
                  it with asgiref.compatibility.guarantee_single_callable()"
                .into(),
        ),
        _ => {
            Err("cannot be called as app(scope, receive, send), as an ASGI 3 application is".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_python;
    use std::ffi::CString;

    fn version_of(code: &str) -> Result<(), String> {
        with_python(|py| {
            let code = CString::new(code).unwrap();
            let module = PyModule::from_code(py, &code, c"asgi_kinds.py", c"asgi_kinds").unwrap();
            check(&module.getattr("app").unwrap())
        })
    }

    #[test]
    fn asgi3_callables_pass_asgi2_ones_are_named() {
        assert!(version_of("async def app(scope, receive, send): pass").is_ok());
        assert!(version_of(
            "class A:\n async def __call__(self, scope, receive, send): pass\napp = A()"
        )
        .is_ok());
        assert!(version_of("def app(*args, **kw): pass").is_ok());
        assert!(version_of("import functools\nasync def f(x, scope, receive, send): pass\napp = functools.partial(f, 1)").is_ok());
        let two = version_of("class app:\n def __init__(self, scope): pass\n async def __call__(self, receive, send): pass")
            .unwrap_err();
        assert!(two.contains("ASGI 2"), "{two}");
        let two = version_of("def app(scope):\n async def run(receive, send): pass\n return run")
            .unwrap_err();
        assert!(two.contains("ASGI 2"), "{two}");
        let none = version_of("def app(a, b): pass").unwrap_err();
        assert!(none.contains("cannot be called"), "{none}");
    }
}
