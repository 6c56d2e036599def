//! The app's children start with `fork`, never `vfork` or `posix_spawn`: only `fork` runs the
//! handler of [`crate::signals::reset_in_forked_children`], which gives a child an empty signal
//! mask. The threads that run Python block the server's signals, and a mask crosses `exec`: a
//! child started by `vfork` from such a thread ignores SIGTERM for ever (`Popen.terminate()`
//! does nothing, `sh -c 'kill $$'` exits 0, a `multiprocessing` spawn child never ends).
//!
//! Programs started without `fork` (`os.system`, `os.posix_spawn`, `os.posix_spawnp`) are
//! given an empty mask by `posix_spawn` itself (`setsigmask`, unless the app asks for another);
//! a C library's own `system()` or `popen()` cannot be reached.
//!
//! Up to Python 3.13, `subprocess._USE_VFORK` (which `multiprocessing` reads too) turns `vfork`
//! off. Python 3.14 dropped it: `_posixsubprocess.fork_exec` uses `vfork` whenever no
//! `preexec_fn`, user, group or groups are asked for. There, `fork_exec` is wrapped so that a
//! call without a user asks for the process's own effective one, which the child sets to what
//! it already is (`setreuid(euid, euid)`, allowed to any process) and which makes it `fork`.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// `_posixsubprocess.fork_exec` with its `uid` argument given when the caller left it None.
#[pyclass(module = "ngx_wsgi", name = "ForkExecWithoutVfork", frozen)]
struct ForkExecWithoutVfork {
    real: Py<PyAny>,
    /// The position of `uid` among the positional-only arguments.
    uid_at: usize,
}

#[pymethods]
impl ForkExecWithoutVfork {
    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        if args.len() <= self.uid_at || !args.get_item(self.uid_at)?.is_none() {
            return self.real.call1(py, args.clone());
        }
        let mut with_uid: Vec<Bound<'_, PyAny>> = args.iter().collect();
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        with_uid[self.uid_at] = euid.into_pyobject(py)?.into_any();
        self.real.call1(py, PyTuple::new(py, with_uid)?)
    }
}

/// `os.posix_spawn` and `os.posix_spawnp` with an empty signal mask unless one is asked for,
/// and `os.system` (C's `system()`: `/bin/sh -c` by `posix_spawn`, then a wait) through them.
const UNMASKED_SPAWNS: &std::ffi::CStr = c"
import functools, os
def _unmasked(spawn):
    @functools.wraps(spawn)
    def spawn_unmasked(*args, **kwargs):
        kwargs.setdefault('setsigmask', ())
        return spawn(*args, **kwargs)
    return spawn_unmasked
if hasattr(os, 'posix_spawn') and not hasattr(os.posix_spawn, '__wrapped__'):
    os.posix_spawn = _unmasked(os.posix_spawn)
    os.posix_spawnp = _unmasked(os.posix_spawnp)
    @functools.wraps(os.system)
    def system(command, _spawn=os.posix_spawn):
        try:
            pid = _spawn('/bin/sh', ['sh', '-c', command], os.environ)
        except OSError:
            return 127 << 8
        return os.waitpid(pid, 0)[1]
    os.system = system
";

/// Makes `subprocess` (and `multiprocessing`, which calls `fork_exec` itself) start children
/// with `fork`, and the programs started without it with an empty signal mask.
pub fn use_fork_for_subprocesses(py: Python<'_>) -> PyResult<()> {
    py.run(UNMASKED_SPAWNS, Some(&pyo3::types::PyDict::new(py)), None)?;
    let subprocess = py.import("subprocess")?;
    // posix_spawn never runs fork handlers either.
    for flag in ["_USE_VFORK", "_USE_POSIX_SPAWN"] {
        if subprocess.hasattr(flag)? {
            subprocess.setattr(flag, false)?;
        }
    }
    if subprocess.hasattr("_USE_VFORK")? {
        return Ok(());
    }
    let posix = py.import("_posixsubprocess")?;
    let real = posix.getattr("fork_exec")?;
    if real.is_instance_of::<ForkExecWithoutVfork>() {
        return Ok(());
    }
    let Some(uid_at) = uid_position(&real)? else {
        return Ok(());
    };
    let wrapped = Bound::new(
        py,
        ForkExecWithoutVfork {
            real: real.unbind(),
            uid_at,
        },
    )?;
    posix.setattr("fork_exec", &wrapped)?;
    // subprocess imported it under its own name.
    if subprocess.hasattr("_fork_exec")? {
        subprocess.setattr("_fork_exec", &wrapped)?;
    }
    Ok(())
}

/// Where `uid` is in `fork_exec`'s signature (`($module, args, ..., uid, ..., /)`); None when
/// the signature is not readable or has no such argument (then nothing is wrapped).
fn uid_position(fork_exec: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    let Ok(signature) = fork_exec.getattr("__text_signature__") else {
        return Ok(None);
    };
    let Ok(signature) = signature.extract::<String>() else {
        return Ok(None);
    };
    let inner = signature
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')');
    let names: Vec<&str> = inner
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "/" && !name.starts_with('$'))
        .collect();
    Ok(names.iter().position(|name| *name == "uid"))
}
