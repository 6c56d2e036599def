//! Starting and stopping the one CPython interpreter of a server process, and attaching the
//! server's threads to it.
//!
//! The server owns the process: Python gets no signal handlers, no `argv`, and its `sys.executable`
//! points at a real python (the build's, or the virtualenv's) rather than at the server binary.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use pyo3::ffi;
use pyo3::prelude::*;

mod exit;
mod exit_deadline;
mod exit_hurry;
mod thread_state;

pub(crate) use exit::exit_as_python_would;
pub use exit::{before_finalize, before_teardown, finalize, run_exit_handlers_only, Finalized};
pub(crate) use exit_deadline::before_deadline_exit;
pub use exit_deadline::{name_shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT};
pub use exit_hurry::exit_hurried_by;
pub(crate) use exit_hurry::{
    hurried, hurried_deadline, hurried_wait_named, HURRIED_WAIT, HURRY_LOOK,
};
use thread_state::MAIN_THREAD_STATE;
pub use thread_state::{attach, forget_thread, is_running};

/// The python this crate was built against (its `sys.executable` at build time).
pub const BUILD_PYTHON: Option<&str> = option_env!("NGX_WSGI_BUILD_PYTHON");
/// That python's standard library directory (its `sysconfig` stdlib path at build time).
pub const BUILD_STDLIB: Option<&str> = option_env!("NGX_WSGI_BUILD_STDLIB");
/// `MAJOR.MINOR` of the libpython this crate links.
pub const BUILD_PYTHON_VERSION: &str = env!("NGX_WSGI_BUILD_PYTHON_VERSION");

/// Interpreter-wide settings (the server's `http`-level directives).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonSettings {
    /// A virtualenv (has `pyvenv.cfg`) or a Python prefix (`sys.prefix`).
    pub home: Option<PathBuf>,
    /// Extra `sys.path` entries, processed like site directories (`.pth` files honoured).
    pub path: Vec<PathBuf>,
}

/// Starts the interpreter on the calling thread and releases the GIL before returning.
pub fn initialize(settings: &PythonSettings) -> Result<(), String> {
    start(settings, true)
}

/// As [`initialize`], in the configuration check's child, whose log is not the server's:
/// `sys.stdout` and `sys.stderr` stay as they are.
pub(crate) fn initialize_for_check(settings: &PythonSettings) -> Result<(), String> {
    start(settings, false)
}

fn start(settings: &PythonSettings, serving: bool) -> Result<(), String> {
    if let Some(home) = &settings.home {
        check_home(home)?;
    }
    pin_code_in_memory();
    crate::signals::reset_in_forked_children();
    crate::forked::this_process_serves();
    // SAFETY: called once per process before any other Python API; the config struct is
    // initialised by PyConfig_InitPythonConfig and cleared before it goes out of scope.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Err("the Python interpreter is already initialised in this process".into());
        }
        let mut config: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut config);
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let mut result = Ok(());
        if let Some(exe) = executable_for(settings.home.as_deref()) {
            let exe = CString::new(exe.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            result = status(ffi::PyConfig_SetBytesString(
                &mut config,
                &mut config.executable,
                exe.as_ptr(),
            ));
        }
        if let (Ok(()), Some(home)) = (&result, &settings.home) {
            if !home.join("pyvenv.cfg").exists() {
                let home = CString::new(home.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
                result = status(ffi::PyConfig_SetBytesString(
                    &mut config,
                    &mut config.home,
                    home.as_ptr(),
                ));
            }
        }
        if result.is_ok() {
            result = status(ffi::Py_InitializeFromConfig(&config));
        }
        ffi::PyConfig_Clear(&mut config);
        result.map_err(|e| format!("cannot start Python {BUILD_PYTHON_VERSION}: {e}"))?;
    }
    // SAFETY: the interpreter was just initialised on this thread, which holds the GIL.
    let py = unsafe { Python::assume_attached() };
    let path_result = crate::python_module::register(py)
        .and_then(|()| add_site_dirs(py, &settings.path))
        .and_then(|()| crate::child_signal_mask::unmask_children(py))
        .and_then(|()| crate::forked::repair_main_thread_in_children(py))
        .and_then(|()| match serving {
            true => crate::std_streams::route(py),
            false => Ok(()),
        })
        .and_then(|()| exit::mark_the_end_of_the_atexit_handlers(py))
        .map_err(|e| crate::traceback::format(py, &e));
    // SAFETY: this thread holds the GIL; the returned state is kept for `finalize`.
    let tstate = unsafe { ffi::PyEval_SaveThread() };
    MAIN_THREAD_STATE.store(tstate, Ordering::Release);
    path_result
}

/// Daemon threads (an app's own, or those its libraries start) keep running after
/// `Py_FinalizeEx` until the process exits. A server that unloads its modules at exit (nginx
/// destroys the cycle, which `dlclose`s them) would unmap the code they run in, and they would
/// crash the exiting process.
/// Marking this code and libpython `RTLD_NODELETE` keeps them mapped until the process ends.
fn pin_code_in_memory() {
    let anchors: [*const libc::c_void; 2] = [
        pin_code_in_memory as *const libc::c_void,
        ffi::Py_IsInitialized as *const libc::c_void,
    ];
    for anchor in anchors {
        // SAFETY: dladdr only reads the loader's tables; dlopen with RTLD_NOLOAD never loads
        // anything new, it only adds a reference (never released) and the NODELETE flag.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            if libc::dladdr(anchor, &mut info) != 0 && !info.dli_fname.is_null() {
                libc::dlopen(
                    info.dli_fname,
                    libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
                );
            }
        }
    }
}

fn status(status: ffi::PyStatus) -> Result<(), String> {
    // SAFETY: PyStatus is a plain struct returned by CPython; err_msg is NULL or a static string.
    unsafe {
        if ffi::PyStatus_Exception(status) == 0 {
            return Ok(());
        }
        if status.err_msg.is_null() {
            Err(format!("exit code {}", status.exitcode))
        } else {
            Err(CStr::from_ptr(status.err_msg)
                .to_string_lossy()
                .into_owned())
        }
    }
}

/// The python executable the interpreter should consider itself to be.
fn executable_for(home: Option<&Path>) -> Option<PathBuf> {
    if let Some(home) = home {
        for name in [
            format!("python{BUILD_PYTHON_VERSION}"),
            "python3".into(),
            "python".into(),
        ] {
            let exe = home.join("bin").join(name);
            if exe.exists() {
                return Some(exe);
            }
        }
        return None;
    }
    BUILD_PYTHON.map(PathBuf::from)
}

/// Rejects a home that cannot work with the libpython this crate links, with a message that
/// says why (the classic symptom otherwise is "No module named 'encodings'" at start).
pub fn check_home(home: &Path) -> Result<(), String> {
    match std::fs::metadata(home) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", home.display())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // SAFETY: plain syscalls.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            return Err(format!(
                "{} cannot be reached by uid {uid} gid {gid} (the workers' user): a directory on \
                 its way is closed to it ({e})",
                home.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} is not a directory (it does not exist)",
                home.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", home.display())),
    }
    let cfg = home.join("pyvenv.cfg");
    if cfg.exists() {
        let text = std::fs::read_to_string(&cfg)
            .map_err(|e| format!("cannot read {}: {e}", cfg.display()))?;
        let value_of = |keys: &[&str]| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                keys.contains(&key.trim()).then(|| value.trim().to_owned())
            })
        };
        if let Some(version) = value_of(&["version", "version_info"]) {
            let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
            if minor != BUILD_PYTHON_VERSION {
                return Err(format!(
                    "{} is Python {minor}; this module embeds Python {BUILD_PYTHON_VERSION}",
                    home.display()
                ));
            }
        }
        if let (Some(base), Some(embedded)) = (value_of(&["home"]), BUILD_STDLIB) {
            if let Some(other) = other_stdlib(Path::new(&base), Path::new(embedded)) {
                return Err(format!(
                    "{} is a virtualenv of another Python {BUILD_PYTHON_VERSION} installation \
                     (the one in {base}, whose standard library is {}); this module embeds the one \
                     whose standard library is {embedded}, and the C extensions of one do not load \
                     in the other: make the virtualenv with {} -m venv",
                    home.display(),
                    other.display(),
                    BUILD_PYTHON.unwrap_or("that python")
                ));
            }
        }
        return Ok(());
    }
    let stdlib = home
        .join("lib")
        .join(format!("python{BUILD_PYTHON_VERSION}"));
    if !stdlib.join("os.py").exists() {
        return Err(format!(
            "{} has no lib/python{BUILD_PYTHON_VERSION}/os.py: not a Python {BUILD_PYTHON_VERSION} prefix or virtualenv",
            home.display()
        ));
    }
    Ok(())
}

/// The standard library a virtualenv whose base is the python in `base` (its `pyvenv.cfg`'s
/// `home`, a `bin` directory) gets, when it is known to be another than `embedded`.
fn other_stdlib(base: &Path, embedded: &Path) -> Option<PathBuf> {
    let stdlib = base
        .parent()?
        .join("lib")
        .join(format!("python{BUILD_PYTHON_VERSION}"));
    if !stdlib.join("os.py").exists() {
        // Not laid out as a prefix (a python linked into another bin directory): not known.
        return None;
    }
    let same = match (stdlib.canonicalize(), embedded.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => return None,
    };
    (!same).then_some(stdlib)
}

fn add_site_dirs(py: Python<'_>, dirs: &[PathBuf]) -> PyResult<()> {
    if dirs.is_empty() {
        return Ok(());
    }
    let site = py.import("site")?;
    for dir in dirs {
        site.call_method1("addsitedir", (dir.as_os_str(),))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_thread_that_ends_leaves_no_thread_listed_alive() {
        crate::testing::with_python(|_| ());
        let (ident, thread) = std::thread::spawn(|| {
            let found = attach(|py| {
                let threading = py.import("threading").unwrap();
                let me = threading.call_method0("current_thread").unwrap();
                assert!(!me.getattr("daemon").unwrap().extract::<bool>().unwrap());
                let ident = me.getattr("ident").unwrap().extract::<u64>().unwrap();
                (ident, me.unbind())
            });
            forget_thread();
            found
        })
        .join()
        .unwrap();
        crate::testing::with_python(|py| {
            let threading = py.import("threading").unwrap();
            let active = threading.getattr("_active").unwrap();
            // Another test's thread may have the same ident by now (it is reused): its own
            // entry is not this one.
            let listed = active.call_method1("get", (ident,)).unwrap();
            assert!(
                !listed.is(thread.bind(py)),
                "thread {ident} is still listed"
            );
        });
    }

    #[test]
    fn home_must_match_the_embedded_version() {
        let dir = std::env::temp_dir().join(format!("ngx-wsgi-venv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pyvenv.cfg"),
            "home = /usr/bin\nversion = 2.7.18\n",
        )
        .unwrap();
        let err = check_home(&dir).unwrap_err();
        assert!(
            err.contains("is Python 2.7; this module embeds Python"),
            "{err}"
        );
        std::fs::write(
            dir.join("pyvenv.cfg"),
            format!("version = {BUILD_PYTHON_VERSION}.4\n"),
        )
        .unwrap();
        assert_eq!(check_home(&dir), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(check_home(&dir).unwrap_err().contains("is not a directory"));
    }

    #[test]
    fn a_virtualenv_must_be_of_the_embedded_installation() {
        let root = std::env::temp_dir().join(format!("ngx-wsgi-other-{}", std::process::id()));
        let stdlib = root
            .join("lib")
            .join(format!("python{BUILD_PYTHON_VERSION}"));
        std::fs::create_dir_all(&stdlib).unwrap();
        std::fs::write(stdlib.join("os.py"), "").unwrap();
        let embedded = Path::new(BUILD_STDLIB.unwrap());
        assert_eq!(
            other_stdlib(&root.join("bin"), embedded),
            Some(stdlib.clone())
        );
        // The embedded installation's own bin directory, and one that is no prefix.
        let own_bin = embedded.parent().unwrap().parent().unwrap().join("bin");
        assert_eq!(other_stdlib(&own_bin, embedded), None);
        assert_eq!(other_stdlib(&root.join("lib").join("bin"), embedded), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
