//! Which WSGI callable to serve (`PATH.py[:CALLABLE]`, another file's path, or
//! `pkg.module[:CALLABLE]`), importing it,
//! and the process-wide table of imported apps.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::PyList;

/// Where an app's module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    /// A Python file, imported as a module named after the file; its directory goes first on
    /// `sys.path`.
    File(PathBuf),
    /// An importable dotted module name.
    Module(String),
}

/// Which interface the callable speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppKind {
    /// PEP 3333 (`wsgi_app`).
    #[default]
    Wsgi,
    /// ASGI 3.0 (`asgi_app`).
    Asgi,
}

impl AppKind {
    fn name(self) -> &'static str {
        match self {
            AppKind::Wsgi => "WSGI",
            AppKind::Asgi => "ASGI",
        }
    }
}

/// A parsed `wsgi_app` (or `asgi_app`) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    pub source: AppSource,
    /// Attribute path of the callable inside the module (`application` by default, `app` for
    /// ASGI).
    pub callable: String,
    pub kind: AppKind,
}

fn is_dotted_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        })
}

impl AppSpec {
    /// Parses `PATH.py[:CALLABLE]` or `pkg.module[:CALLABLE]`. A relative path is resolved
    /// against `base` (the server's prefix).
    pub fn parse(text: &str, base: &Path) -> Result<AppSpec, String> {
        Self::parse_as(text, base, AppKind::Wsgi)
    }

    /// Parses an `asgi_app` value: as [`parse`](Self::parse), the callable defaulting to `app`.
    pub fn parse_asgi(text: &str, base: &Path) -> Result<AppSpec, String> {
        Self::parse_as(text, base, AppKind::Asgi)
    }

    fn parse_as(text: &str, base: &Path, kind: AppKind) -> Result<AppSpec, String> {
        let default_callable = match kind {
            AppKind::Wsgi => "application",
            AppKind::Asgi => "app",
        };
        let (target, callable) = match text.rsplit_once(':') {
            Some((target, callable)) if is_dotted_identifier(callable) => (target, callable),
            Some((_, callable)) => {
                return Err(format!(
                    "\"{text}\": callable {callable:?} is not a Python name"
                ));
            }
            None => (text, default_callable),
        };
        // A path: a `.py` file, or any file named by a path (mod_wsgi's `.wsgi` scripts).
        let source = if target.ends_with(".py") || target.contains('/') {
            let path = Path::new(target);
            AppSource::File(if path.is_absolute() {
                path.to_owned()
            } else {
                base.join(path)
            })
        } else if is_dotted_identifier(target) {
            AppSource::Module(target.to_owned())
        } else {
            return Err(format!(
                "\"{text}\" is neither PATH.py[:CALLABLE] nor module.name[:CALLABLE]"
            ));
        };
        Ok(AppSpec {
            source,
            callable: callable.to_owned(),
            kind,
        })
    }

    /// Imports the module and returns the callable; errors carry the Python traceback.
    pub fn load(&self, py: Python<'_>) -> Result<Py<PyAny>, String> {
        let module = match &self.source {
            AppSource::File(path) => import_file(py, path).map_err(|e| {
                let hint = shadowing_hint(py, &e, path);
                crate::traceback::format(py, &e) + &hint
            }),
            AppSource::Module(name) => py
                .import(name.as_str())
                .map(Bound::into_any)
                .map_err(|e| crate::traceback::format(py, &e)),
        }?;
        let mut obj = module;
        for attr in self.callable.split('.') {
            obj = obj.getattr(attr).map_err(|_| {
                format!(
                    "{} has no attribute {:?} (looking for the {} callable {:?})",
                    self.describe(),
                    attr,
                    self.kind.name(),
                    self.callable
                )
            })?;
        }
        if !obj.is_callable() {
            return Err(format!(
                "{}:{} is not callable",
                self.describe(),
                self.callable
            ));
        }
        let kind_check = match self.kind {
            AppKind::Asgi => crate::asgi_version::check(&obj),
            AppKind::Wsgi => crate::asgi_version::check_not_asgi(&obj),
        };
        kind_check.map_err(|e| format!("{}:{} {e}", self.describe(), self.callable))?;
        Ok(obj.unbind())
    }

    fn describe(&self) -> String {
        match &self.source {
            AppSource::File(p) => p.display().to_string(),
            AppSource::Module(m) => format!("module {m}"),
        }
    }
}

/// A note for an import that failed because the app file's directory, on `sys.path` before
/// the rest, has a module or package of the missing module's name that hides an installed one
/// (a Django project's inner directory: NetBox's `netbox/netbox/graphql` hides the `graphql`
/// package its dependencies import); empty otherwise (the app's own module that fails to
/// import, with no other of its name, is the app's error alone).
fn shadowing_hint(py: Python<'_>, err: &PyErr, path: &Path) -> String {
    if !err.is_instance_of::<pyo3::exceptions::PyImportError>(py) {
        return String::new();
    }
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return String::new();
    };
    let Some(top) = err
        .value(py)
        .getattr("name")
        .ok()
        .and_then(|n| n.extract::<String>().ok())
        .and_then(|n| n.split('.').next().map(str::to_owned))
        .filter(|top| !top.is_empty() && top != stem)
    else {
        return String::new();
    };
    if !hides_an_installed_module(py, dir, &top).unwrap_or(false) {
        return String::new();
    }
    let package = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_dotted_identifier(n) && !n.contains('.'));
    let instead = match (dir.join("__init__.py").is_file(), package, dir.parent()) {
        (true, Some(package), Some(above)) => format!(
            "name the app as a module instead: `{package}.{stem}` (with {} on the Python path: \
             `wsgi_python_path`, `NgxWsgiPythonPath`)",
            above.display()
        ),
        _ => "move the app file out of that directory, or name the app as a module".to_owned(),
    };
    format!(
        "\nnote: {}, the app file's directory, comes before the installed modules on sys.path and \
         has its own {top:?}, which hides the installed one; {instead}",
        dir.display()
    )
}

/// Whether `top`, as imported, is the one in `dir`, and another of that name is on the rest of
/// `sys.path`.
fn hides_an_installed_module(py: Python<'_>, dir: &Path, top: &str) -> PyResult<bool> {
    let sys = py.import("sys")?;
    let Ok(loaded) = sys.getattr("modules")?.get_item(top) else {
        return Ok(false);
    };
    let from_dir = loaded
        .getattr("__file__")
        .ok()
        .and_then(|f| f.extract::<PathBuf>().ok())
        .is_some_and(|f| f.starts_with(dir));
    if !from_dir {
        return Ok(false);
    }
    let others = PyList::empty(py);
    for entry in sys.getattr("path")?.try_iter()? {
        let entry = entry?;
        if entry.extract::<PathBuf>().ok().as_deref() != Some(dir) {
            others.append(entry)?;
        }
    }
    let spec = py
        .import("importlib.machinery")?
        .getattr("PathFinder")?
        .call_method1("find_spec", (top, others))?;
    Ok(!spec.is_none())
}

/// The name an app file is imported as: its own (`my-app.py` is `my-app`, which the children
/// of multiprocessing's `spawn` and `forkserver` import again to find the functions pickled
/// for them, as `importlib` finds the file under that name on `sys.path`), but that a `.` in
/// it is a `_` (it would name a package); a file that is not `.py` (mod_wsgi's `site.wsgi`,
/// `django.wsgi`) has its extension in its name (`_script` when it has none), so that it does
/// not take the place of the module its stem names.
fn module_name(path: &Path) -> String {
    let Some(file) = path.file_name().and_then(|s| s.to_str()) else {
        return "wsgi_app".to_owned();
    };
    match file.strip_suffix(".py") {
        Some(stem) => stem.replace('.', "_"),
        None if file.contains('.') => file.replace('.', "_"),
        None => format!("{file}_script"),
    }
}

/// The name app files had before they kept their own (`-` was `_` too), which code of the
/// app's may still import (`from my_app import helper`), or a pickle name (a cache's, a job
/// queue's).
fn former_module_name(path: &Path) -> Option<String> {
    let name = module_name(path);
    let former = name.replace('-', "_");
    (former != name && path.extension().is_some_and(|e| e == "py")).then_some(former)
}

/// The loader of a script not named `.py`: compiled from its source at every import, with no
/// cached bytecode, whose file (`__pycache__/site.cpython-311.pyc`, named after the stem) a
/// `site.py` beside it would share.
const SCRIPT_LOADER: &std::ffi::CStr = c"
from importlib.machinery import SourceFileLoader


class ScriptLoader(SourceFileLoader):
    def get_code(self, fullname):
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)
";

fn loader_for<'py>(py: Python<'py>, name: &str, path: &Path) -> PyResult<Bound<'py, PyAny>> {
    let class = if path.extension().is_some_and(|e| e == "py") {
        py.import("importlib.machinery")?
            .getattr("SourceFileLoader")?
    } else {
        PyModule::from_code(
            py,
            SCRIPT_LOADER,
            c"ngx_wsgi_script_loader.py",
            c"ngx_wsgi_script_loader",
        )?
        .getattr("ScriptLoader")?
    };
    class.call1((name, path.as_os_str()))
}

fn import_file<'py>(py: Python<'py>, path: &Path) -> PyResult<Bound<'py, PyAny>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        // A directory above it the workers' user may not enter (they run as nginx's `user` or
        // Apache's `User`, not as whoever wrote the configuration).
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // SAFETY: geteuid only reads the process's credentials.
            let uid = unsafe { libc::geteuid() };
            return Err(pyo3::exceptions::PyPermissionError::new_err(format!(
                "{}: permission denied to this process's user (uid {uid}): {e}",
                path.display()
            )));
        }
        _ => {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "{} does not exist or is not a file",
                path.display()
            )));
        }
    }
    let name = module_name(path);
    let sys = py.import("sys")?;
    if let Some(dir) = path.parent() {
        let sys_path = sys.getattr("path")?.cast_into::<PyList>()?;
        let dir = dir.as_os_str();
        if !sys_path.contains(dir)? {
            sys_path.insert(0, dir)?;
        }
    }
    let modules = sys.getattr("modules")?;
    if let Ok(existing) = modules.get_item(&name) {
        let same_file = existing
            .getattr("__file__")
            .and_then(|f| f.extract::<PathBuf>())
            .is_ok_and(|f| is_same_file(&f, path));
        if same_file {
            return Ok(existing);
        }
    }
    let util = py.import("importlib.util")?;
    // The loader named, as the file's extension picks none when it is not `.py`.
    let loader = loader_for(py, &name, path)?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("loader", loader)?;
    let spec = util.call_method(
        "spec_from_file_location",
        (&name, path.as_os_str()),
        Some(&kwargs),
    )?;
    if spec.is_none() {
        return Err(pyo3::exceptions::PyImportError::new_err(format!(
            "cannot import {}",
            path.display()
        )));
    }
    let module = util.call_method1("module_from_spec", (&spec,))?;
    modules.set_item(&name, &module)?;
    if let Err(e) = spec
        .getattr("loader")?
        .call_method1("exec_module", (&module,))
    {
        let _ = modules.del_item(&name);
        return Err(e);
    }
    if let Some(former) = former_module_name(path) {
        if !modules.contains(&former)? {
            modules.set_item(former, &module)?;
        }
    }
    Ok(module)
}

/// Whether `a` and `b` name one file: the same spelling, or another one of it with the same
/// file name (through a symlinked directory, a `/../`), which locations may use for one app
/// (imported once, not once for each; a link of another name is another module's name).
fn is_same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The faults (SIGSEGV...) whose handler is a Python function (`signal.signal`), not one written
/// in C (`faulthandler`, which Python's `signal.getsignal` does not see).
fn python_fault_handlers(py: Python<'_>) -> Vec<libc::c_int> {
    let Ok(signal) = py.import("signal") else {
        return Vec::new();
    };
    crate::signals::FAULTS
        .into_iter()
        .filter(|&sig| {
            signal
                .call_method1("getsignal", (sig,))
                .is_ok_and(|h| h.is_callable())
        })
        .collect()
}

/// Which green-thread library, if any, monkey-patched `threading` (gevent's or eventlet's
/// `patch_all()` in an app written for `gunicorn -k gevent`).
fn green_threads(py: Python<'_>) -> Option<&'static str> {
    let modules = py.import("sys").ok()?.getattr("modules").ok()?;
    let patched = |module: &str, check: &str, name: &str| -> bool {
        modules
            .get_item(module)
            .ok()
            .and_then(|m| m.call_method1(check, (name,)).ok())
            .and_then(|r| r.is_truthy().ok())
            .unwrap_or(false)
    };
    if patched("gevent.monkey", "is_module_patched", "threading") {
        Some("gevent's monkey-patching")
    } else if patched("eventlet.patcher", "is_monkey_patched", "thread") {
        Some("eventlet's monkey-patching")
    } else {
        None
    }
}

/// The apps of this process, in the order the server configured them.
pub struct Apps;

static LOADED: OnceLock<Vec<Option<Py<PyAny>>>> = OnceLock::new();

impl Apps {
    /// Imports every app once (at process start). Returns those that could not be loaded (the
    /// index of the app and the error): they stay unloaded ([`Apps::get`] has none for them),
    /// and the others serve.
    pub fn load_all(specs: &[AppSpec]) -> Vec<(usize, String)> {
        let server_signals = crate::signals::ServerSignals::note();
        let (apps, failed, python_faults) = crate::interpreter::attach(|py| {
            if let Err(e) = crate::app_exit::install(py) {
                tracing::warn!(target: "wsgi", "cannot watch for the apps' os._exit(): {e}");
            }
            let mut failed = Vec::new();
            let apps: Vec<Option<Py<PyAny>>> = specs
                .iter()
                .enumerate()
                .map(|(i, spec)| spec.load(py).map_err(|e| failed.push((i, e))).ok())
                .collect();
            if let Err(e) = crate::logging_bridge::install_if_unconfigured(py) {
                tracing::warn!(target: "wsgi", "cannot route Python logging to the server's log: {e}");
            }
            let python_faults = python_fault_handlers(py);
            if let Some(patcher) = green_threads(py) {
                tracing::warn!(
                    target: "wsgi",
                    "{patcher} replaced Python's threading while the apps were imported: threads \
                     the app starts (its own, a Sentry or OpenTelemetry exporter's) are greenlets \
                     that never run here, and its subprocesses may fail; the server runs each \
                     request on a thread of its own, so drop the monkey-patching (it is for \
                     servers that run requests as greenlets)"
                );
            }
            (apps, failed, python_faults)
        });
        for signal in server_signals.restore(&python_faults) {
            tracing::warn!(
                target: "wsgi",
                "an app set a handler for {signal} while it was imported; the server keeps its own \
                 (the server's processes handle their signals, and a Python handler there would never run)"
            );
        }
        let blocking = server_signals.restore_mask();
        if !blocking.is_empty() {
            tracing::warn!(
                target: "wsgi",
                "an app changed the blocking of {} in the server's thread while it was imported; \
                 the server puts its mask back (its own threads are the app's to mask)",
                blocking.join(", ")
            );
        }
        crate::interpreter::before_teardown(release_for_teardown);
        match LOADED.set(apps) {
            Ok(()) => failed,
            Err(_) => vec![(0, "the apps of this process were already loaded".to_owned())],
        }
    }

    /// The app at `index`, if loaded.
    pub fn get(index: usize) -> Option<&'static Py<PyAny>> {
        LOADED.get()?.get(index)?.as_ref()
    }
}

/// Python's teardown is next: the apps are let go, so that the objects their modules hold (a
/// database connection, a file being written) are finalised with those modules, as in Python's
/// own exit. Held for ever, the app's function kept its module's globals from the teardown.
fn release_for_teardown(_py: Python<'_>) {
    for app in LOADED.get().into_iter().flatten().flatten() {
        // The teardown runs in an ordinary exit, which no request inside Python reaches (those
        // exits end the process without it), and ends the process: the reference the static
        // keeps is never used again, nor dropped (a static).
        // SAFETY: the GIL is held (the hook's contract) and the reference is never used again.
        unsafe { pyo3::ffi::Py_DECREF(app.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_modules() {
        let base = Path::new("/etc/nginx");
        assert_eq!(
            AppSpec::parse("/srv/app/wsgi.py", base).unwrap(),
            AppSpec {
                source: AppSource::File("/srv/app/wsgi.py".into()),
                callable: "application".into(),
                kind: AppKind::Wsgi,
            }
        );
        assert_eq!(
            AppSpec::parse("app/wsgi.py:app.wsgi_app", base).unwrap(),
            AppSpec {
                source: AppSource::File("/etc/nginx/app/wsgi.py".into()),
                callable: "app.wsgi_app".into(),
                kind: AppKind::Wsgi,
            }
        );
        assert_eq!(
            AppSpec::parse("mysite.wsgi", base).unwrap(),
            AppSpec {
                source: AppSource::Module("mysite.wsgi".into()),
                callable: "application".into(),
                kind: AppKind::Wsgi,
            }
        );
        assert_eq!(
            AppSpec::parse("pkg.mod:make", base).unwrap().callable,
            "make"
        );
        assert!(AppSpec::parse("pkg.mod:", base).is_err());
        assert!(AppSpec::parse("pkg.mod:1x", base).is_err());
        assert!(AppSpec::parse("not a module", base).is_err());
        assert_eq!(
            AppSpec::parse("/srv/site/django.wsgi", base)
                .unwrap()
                .source,
            AppSource::File("/srv/site/django.wsgi".into())
        );
        assert_eq!(
            AppSpec::parse("site/app.wsgi:app", base).unwrap().source,
            AppSource::File("/etc/nginx/site/app.wsgi".into())
        );

        let asgi = AppSpec::parse_asgi("main", base).unwrap();
        assert_eq!((asgi.callable.as_str(), asgi.kind), ("app", AppKind::Asgi));
        assert_eq!(
            AppSpec::parse_asgi("main:api", base).unwrap().callable,
            "api"
        );
    }

    #[test]
    fn names_modules_after_their_files() {
        assert_eq!(module_name(Path::new("/srv/my-app.py")), "my-app");
        assert_eq!(module_name(Path::new("/srv/app.v2.py")), "app_v2");
        assert_eq!(module_name(Path::new("/srv/site.wsgi")), "site_wsgi");
        assert_eq!(module_name(Path::new("/srv/app/json")), "json_script");
        assert_eq!(
            former_module_name(Path::new("/srv/my-app.py")).as_deref(),
            Some("my_app")
        );
        assert_eq!(former_module_name(Path::new("/srv/app.v2.py")), None);
    }
}
