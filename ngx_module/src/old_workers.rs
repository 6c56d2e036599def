//! The workers a reload replaces, as nginx's master knows them when it takes the new
//! configuration (its `init_module`, before it forks the new workers, which inherit the note): a
//! new worker that could not load its apps while they still run may have failed on something
//! they hold (ZODB's `FileStorage` lock, a SQLite database in exclusive mode), which they let go
//! of as they exit, so it tries again at their exit rather than at a fixed time
//! (`unloaded_aside.rs`). Only workers that ran apps are noted: others hold nothing of theirs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nginx_sys::{ngx_last_process, ngx_process_t, ngx_processes, NGX_MAX_PROCESSES};
use ngx_wsgi::process_alive::Watched;

/// What the master noted as it took a configuration.
struct Note {
    generation: u32,
    /// When, on the monotonic clock, in ms.
    at_ms: u64,
    /// The workers of the configurations before it that ran then.
    workers: Vec<Watched>,
}

static NOTE: Mutex<Note> = Mutex::new(Note {
    generation: 0,
    at_ms: 0,
    workers: Vec::new(),
});

/// Whether the configuration the master took last has apps (its workers run Python).
static LAST_HAS_APPS: AtomicBool = AtomicBool::new(false);

/// nginx's name for its worker processes (`ngx_start_worker_processes`).
const WORKER_NAME: &std::ffi::CStr = c"worker process";

/// In the master, as it takes a configuration (after the generation moved on; `has_apps`: it
/// has apps): notes the worker processes that still run, when the configuration before had apps.
///
/// # Safety
/// The master's (or a lone process's) only thread, in `init_module`.
pub(crate) unsafe fn note(has_apps: bool) {
    let workers = if LAST_HAS_APPS.swap(has_apps, Ordering::AcqRel) {
        // SAFETY: per the function contract: nginx's process table, read up to its last used
        // slot; its SIGCHLD handler, the other writer, runs only while the master waits in
        // sigsuspend, not during a reload's init_module (nor at the first start: no children).
        let table = unsafe {
            let last = usize::try_from(ngx_last_process).unwrap_or(0);
            std::slice::from_raw_parts(
                std::ptr::addr_of!(ngx_processes).cast::<ngx_process_t>(),
                last.min(NGX_MAX_PROCESSES as usize),
            )
        };
        workers(table).into_iter().map(Watched::new).collect()
    } else {
        Vec::new()
    };
    let mut note = NOTE.lock().unwrap_or_else(|e| e.into_inner());
    *note = Note {
        generation: crate::generation::current(),
        at_ms: ngx_wsgi::monotonic::ms(),
        workers,
    };
}

/// The worker processes of a slice of nginx's process table (not its cache manager and loader,
/// nor free slots).
fn workers(table: &[ngx_process_t]) -> Vec<libc::pid_t> {
    table
        .iter()
        .filter(|p| {
            // SAFETY: a slot's name is null or one of nginx's static strings.
            p.pid > 0
                && !p.name.is_null()
                && unsafe { std::ffi::CStr::from_ptr(p.name) } == WORKER_NAME
        })
        .map(|p| p.pid)
        .collect()
}

/// Whether the workers that this worker's configuration replaced still run (the master notes
/// them in the `init_module` that moves the generation on: a note of another generation is
/// none of this worker's).
pub(crate) fn running() -> bool {
    let note = NOTE.lock().unwrap_or_else(|e| e.into_inner());
    note.generation == crate::generation::current() && note.workers.iter().any(Watched::running)
}

/// When the master took this worker's configuration (the monotonic clock, in ms).
pub(crate) fn reload_at_ms() -> u64 {
    NOTE.lock().unwrap_or_else(|e| e.into_inner()).at_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(pid: libc::pid_t, name: &'static std::ffi::CStr) -> ngx_process_t {
        // SAFETY: nginx's process slot is plain data, all zeros a valid (free) one.
        let mut p: ngx_process_t = unsafe { std::mem::zeroed() };
        p.pid = pid;
        p.name = name.as_ptr().cast_mut();
        p
    }

    #[test]
    fn the_workers_are_the_live_worker_slots_only() {
        let mut free = slot(-1, c"worker process");
        free.name = std::ptr::null_mut();
        let table = [
            slot(101, c"worker process"),
            slot(102, c"cache manager process"),
            slot(-1, c"worker process"),
            free,
            slot(103, c"worker process"),
            slot(104, c"cache loader process"),
        ];
        assert_eq!(workers(&table), vec![101, 103]);
    }
}
