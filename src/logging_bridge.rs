//! Python's own logging, and the request a log line belongs to.
//!
//! When the apps configure no handler on the root logger, records of Python's `logging` go to
//! the server's error log (through `tracing`, target `python`) with their level, but those a
//! handler of theirs already writes to standard output or error (the same log). Lines written
//! while a request runs carry its id (the server's, e.g. nginx's `$request_id`): a WSGI
//! request's from its thread, an ASGI request's from a context variable its task sets (one
//! thread runs every ASGI task, and a task's context follows it across its awaits and into the
//! tasks it spawns).

use std::cell::RefCell;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

thread_local! {
    static CURRENT_REQUEST: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `id` as the calling thread's current request.
pub(crate) fn with_request<R>(id: &[u8], f: impl FnOnce() -> R) -> R {
    CURRENT_REQUEST.with_borrow_mut(|cur| {
        cur.clear();
        cur.extend_from_slice(id);
    });
    let result = f();
    CURRENT_REQUEST.with_borrow_mut(Vec::clear);
    result
}

/// `, request_id: ID` for the calling thread's request (empty outside one).
pub(crate) fn request_suffix() -> String {
    CURRENT_REQUEST.with_borrow(|id| {
        if id.is_empty() {
            String::new()
        } else {
            format!(", request_id: {}", String::from_utf8_lossy(id))
        }
    })
}

static REQUEST_ID_VAR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The context variable that holds the id of the ASGI request whose task runs.
pub(crate) fn request_id_var(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    REQUEST_ID_VAR
        .get_or_try_init(py, || {
            Ok(py
                .import("contextvars")?
                .getattr("ContextVar")?
                .call1(("ngx_wsgi_request_id",))?
                .unbind())
        })
        .map(|v| v.bind(py))
}

/// What the context variable holds for a request's task: its id, and with it where its log
/// entries go when that is not the server's main log (see [`crate::server_log::routed`]).
pub(crate) fn context_value(py: Python<'_>, id: String, route: usize) -> PyResult<Py<PyAny>> {
    if route == 0 {
        return Ok(id.into_pyobject(py)?.into_any().unbind());
    }
    Ok((id, route).into_pyobject(py)?.into_any().unbind())
}

/// `, request_id: ID` and the log route of the request of the running context (an ASGI
/// task's), if any.
fn context_origin(py: Python<'_>) -> (String, usize) {
    let Some(var) = REQUEST_ID_VAR.get(py) else {
        return (String::new(), 0);
    };
    let Ok(value) = var.bind(py).call_method1("get", ("",)) else {
        return (String::new(), 0);
    };
    let (id, route) = value
        .extract::<String>()
        .map(|id| (id, 0))
        .or_else(|_| value.extract::<(String, usize)>())
        .unwrap_or_default();
    match id.is_empty() {
        true => (String::new(), route),
        false => (format!(", request_id: {id}"), route),
    }
}

/// `, request_id: ID` for the request this thread (WSGI) or this context (an ASGI task) serves,
/// if any, and where its log entries go.
pub(crate) fn python_origin(py: Python<'_>) -> (String, usize) {
    let (suffix, route) = (request_suffix(), crate::server_log::route());
    if suffix.is_empty() && route == 0 {
        context_origin(py)
    } else {
        (suffix, route)
    }
}

#[pyfunction]
fn emit(
    py: Python<'_>,
    level: i32,
    name: &Bound<'_, pyo3::types::PyString>,
    message: &Bound<'_, pyo3::types::PyString>,
) {
    let (name, message) = (
        crate::log_text::python_text(name),
        crate::log_text::python_text(message),
    );
    let (suffix, route) = python_origin(py);
    crate::server_log::routed(route, || match level {
        l if l >= 40 => tracing::error!(target: "python", "{name}: {message}{suffix}"),
        l if l >= 30 => tracing::warn!(target: "python", "{name}: {message}{suffix}"),
        l if l >= 20 => tracing::info!(target: "python", "{name}: {message}{suffix}"),
        _ => tracing::debug!(target: "python", "{name}: {message}{suffix}"),
    })
}

const HANDLER: &std::ffi::CStr = c"
import logging
import sys

class ServerLogHandler(logging.Handler):
    '''Sends records to the web server's error log, but those that a handler of the app's on
    their way up writes to standard output or error (which are that log) already.'''

    def __init__(self, emit):
        super().__init__()
        self._emit = emit

    def handle(self, record):
        logger = logging.root.manager.loggerDict.get(record.name)
        while isinstance(logger, logging.Logger) and logger is not logging.root:
            for h in logger.handlers:
                try:
                    writes_it = _to_standard_streams(h) and record.levelno >= h.level and h.filter(record)
                except Exception:
                    writes_it = False
                if writes_it:
                    return False
            logger = logger.parent
        return super().handle(record)

    def emit(self, record):
        try:
            self._emit(record.levelno, record.name, self.format(record))
        except Exception:
            self.handleError(record)


def leave_basic_config_to_the_app(handler):
    '''`logging.basicConfig()` does nothing when the root logger has a handler: one the app
    calls after its import (in a create_app(), at its first request) found the server's and
    kept the WARNING level. Without a destination of its own (or to standard output or error,
    which are the server's log), it sets the root level and the format of the server's handler,
    whose entries keep their levels; with one (a file, another stream, handlers), the server's
    handler steps aside for it, as it would have found none.'''
    original = logging.basicConfig
    standard = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)

    def basicConfig(**kwargs):
        with logging._lock:
            root = logging.root
            if handler not in root.handlers:
                return original(**kwargs)
            stream = kwargs.get('stream')
            if 'filename' in kwargs or 'handlers' in kwargs or (
                    stream is not None and not any(stream is s for s in standard)):
                root.removeHandler(handler)
                try:
                    return original(**kwargs)
                finally:
                    if not root.handlers:
                        root.addHandler(handler)
            if kwargs.get('force'):
                for h in root.handlers[:]:
                    if h is not handler:
                        root.removeHandler(h)
                        h.close()
            elif len(root.handlers) > 1:
                return None  # the app added a handler of its own: Python's call does nothing
            if any(k in kwargs for k in ('format', 'datefmt', 'style')):
                handler.setFormatter(logging.Formatter(
                    kwargs.get('format'), kwargs.get('datefmt'), kwargs.get('style', '%')))
            if kwargs.get('level') is not None:
                root.setLevel(kwargs['level'])
            return None

    basicConfig.__doc__ = original.__doc__
    basicConfig.__wrapped__ = original
    logging.basicConfig = basicConfig


def take_over_standard_error(handler):
    '''A root logger whose only handlers write to standard error (a bare
    `logging.basicConfig()` at import, as Plone's diazo package calls): that stream is the
    server's log, where each line of a record became an entry at `error`, a traceback one entry
    a line. The server's handler takes their place, with their level and formatter (but
    basicConfig's default, whose level and name the server's entries give anyway), and each
    record keeps its level, in one entry. (Standard output may be elsewhere: a journal.)'''
    root = logging.root
    with logging._lock:
        theirs = list(root.handlers)
        if not theirs or not all(type(h) is logging.StreamHandler and _to_standard_error(h)
                                 for h in theirs):
            return False
        formatter = theirs[0].formatter
        if formatter is not None and getattr(formatter, '_fmt', None) not in (None, logging.BASIC_FORMAT):
            handler.setFormatter(formatter)
        handler.setLevel(min(h.level for h in theirs))
        for h in theirs:
            root.removeHandler(h)
        root.addHandler(handler)
    return True


def _to_standard_error(handler):
    return _writes_to(handler, (sys.stderr, sys.__stderr__), (2,))


def _to_standard_streams(handler):
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    return _writes_to(handler, (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__), (1, 2))


def _writes_to(handler, streams, fds):
    stream = getattr(handler, 'stream', None)
    if stream is None:
        return False
    if any(stream is s for s in streams):
        return True
    try:
        return stream.fileno() in fds
    except Exception:
        return False
";

/// Gives the root logger a handler to the server's log when nobody configured one (whose level
/// and format a later `logging.basicConfig()` sets), or when its only handlers write to
/// standard error, which is that log (a bare `basicConfig()` at import).
pub fn install_if_unconfigured(py: Python<'_>) -> PyResult<bool> {
    let logging = py.import("logging")?;
    let root = logging.getattr("root")?;
    let module = PyModule::from_code(py, HANDLER, c"ngx_wsgi_logging.py", c"ngx_wsgi_logging")?;
    let handler = module
        .getattr("ServerLogHandler")?
        .call1((wrap_pyfunction!(emit, &module)?,))?;
    if root.getattr("handlers")?.is_empty()? {
        root.call_method1("addHandler", (&handler,))?;
    } else if !module
        .call_method1("take_over_standard_error", (&handler,))?
        .is_truthy()?
    {
        return Ok(false);
    }
    module.call_method1("leave_basic_config_to_the_app", (handler,))?;
    // A warning (a library's DeprecationWarning, PyJWT's key-length one) went to standard error,
    // an `error` entry a line; through logging it reaches the same log at `warn`, in one entry.
    logging.call_method1("captureWarnings", (true,))?;
    Ok(true)
}
