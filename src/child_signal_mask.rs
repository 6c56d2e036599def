//! The app's children start with an empty signal mask. The threads that run Python block the
//! server's signals, and a mask crosses `exec`: a child that kept it would ignore SIGTERM for
//! ever (`Popen.terminate()` does nothing, `sh -c 'kill $$'` exits 0, a `multiprocessing` spawn
//! child never ends).
//!
//! - A child started with `fork` gets the empty mask from the handler of
//!   [`crate::signals::reset_in_forked_children`]. Up to Python 3.13, `subprocess._USE_VFORK`
//!   (which `multiprocessing` reads too) turns `vfork`, which runs no fork handler, off.
//! - Python 3.14 dropped that switch: `_posixsubprocess.fork_exec` uses `vfork` whenever it can,
//!   and gives the child the calling thread's mask. There, `fork_exec` is called with the
//!   thread's mask emptied for the call (it blocks every signal itself at once, for the `vfork`).
//! - Programs started with `posix_spawn` (`os.posix_spawn`, `os.posix_spawnp`, and `os.system`,
//!   run through them as C's `system()` runs `/bin/sh -c`) are given the empty mask by
//!   `posix_spawn` itself (`setsigmask`, unless the app asks for another). A C library's own
//!   `system()` or `popen()` cannot be reached.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

/// `_posixsubprocess.fork_exec`, called with the calling thread's signal mask emptied.
#[pyclass(module = "ngx_wsgi", name = "ForkExecUnmasked", frozen)]
struct ForkExecUnmasked {
    real: Py<PyAny>,
}

#[pymethods]
impl ForkExecUnmasked {
    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        use crate::signals::{change_thread_mask, no_signals};
        // The thread's own mask comes back whatever the call did.
        let old = change_thread_mask(libc::SIG_SETMASK, &no_signals());
        // `vfork` runs no fork handler: the start takes its turn here.
        let turn = crate::spawn_gate::Turn::take(py);
        let result = self.real.call1(py, args.clone());
        drop(turn);
        change_thread_mask(libc::SIG_SETMASK, &old);
        result
    }
}

/// The process's environment as C's `environ` has it now (`os.putenv` and C extensions change
/// it; `os.environ` is Python's copy), as `system()` gives it to its shell.
#[pyfunction]
fn c_environ(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    use std::os::unix::ffi::OsStrExt;
    let env = PyDict::new(py);
    for (name, value) in std::env::vars_os() {
        env.set_item(
            PyBytes::new(py, name.as_bytes()),
            PyBytes::new(py, value.as_bytes()),
        )?;
    }
    Ok(env)
}

/// A way to start a program without `fork` (`os.posix_spawn`), called in its turn with the
/// server's accepting of connections (see [`crate::spawn_gate`]). In Rust, so that no Python
/// runs between the turn's start and its end (an exception raised there, `wsgi_read_timeout`'s
/// say, would leave the turn taken for good).
#[pyclass(module = "ngx_wsgi", name = "InTurn", frozen)]
struct InTurn {
    spawn: Py<PyAny>,
}

#[pymethods]
impl InTurn {
    #[new]
    fn new(spawn: Py<PyAny>) -> Self {
        InTurn { spawn }
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let _turn = crate::spawn_gate::Turn::take(py);
        self.spawn.call(py, args.clone(), kwargs)
    }
}

/// `os.posix_spawn` and `os.posix_spawnp` with an empty signal mask unless one is asked for,
/// taking their turn with the server's accepts, and `os.system` (C's `system()`: `/bin/sh -c`
/// by `posix_spawn`, then a wait) through them.
const UNMASKED_SPAWNS: &std::ffi::CStr = c"
import functools, os, sys
def _unmasked(spawn):
    in_turn = InTurn(spawn)
    @functools.wraps(spawn)
    def spawn_unmasked(*args, **kwargs):
        kwargs.setdefault('setsigmask', ())
        return in_turn(*args, **kwargs)
    return spawn_unmasked
if hasattr(os, 'posix_spawn') and not hasattr(os.posix_spawn, '__wrapped__'):
    os.posix_spawn = _unmasked(os.posix_spawn)
    os.posix_spawnp = _unmasked(os.posix_spawnp)
    @functools.wraps(os.system)
    def system(command, _spawn=os.posix_spawn, _environ=c_environ):
        sys.audit('os.system', command)
        try:
            pid = _spawn('/bin/sh', ['sh', '-c', command], _environ())
        except OSError:
            return 127 << 8
        return os.waitpid(pid, 0)[1]
    os.system = system
";

/// Gives the app's children (`subprocess`, `multiprocessing`, `os.system`, `os.posix_spawn`)
/// an empty signal mask however they are started.
pub fn unmask_children(py: Python<'_>) -> PyResult<()> {
    let globals = PyDict::new(py);
    globals.set_item("c_environ", wrap_pyfunction!(c_environ, py)?)?;
    globals.set_item("InTurn", py.get_type::<InTurn>())?;
    py.run(UNMASKED_SPAWNS, Some(&globals), None)?;
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
    if real.is_instance_of::<ForkExecUnmasked>() {
        return Ok(());
    }
    let wrapped = Bound::new(
        py,
        ForkExecUnmasked {
            real: real.unbind(),
        },
    )?;
    posix.setattr("fork_exec", &wrapped)?;
    // subprocess imported it under its own name.
    if subprocess.hasattr("_fork_exec")? {
        subprocess.setattr("_fork_exec", &wrapped)?;
    }
    Ok(())
}
