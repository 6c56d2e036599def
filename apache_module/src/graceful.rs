//! Stopping this child gracefully, the way the MPM stops it for `MaxConnectionsPerChild`: it
//! closes its listeners, lets the requests and connections it has finish, then exits, and the
//! parent starts another in its place. Apache has no call for a module to ask for that, so:
//!
//! - event and worker MPMs: the child's main thread waits on the "pipe of death" the parent
//!   shares with all its children, and stops gracefully on a `!` (what `apachectl graceful`
//!   writes there). A `!` written to the shared pipe could stop any child, so this child's copy of
//!   the pipe's read end is replaced with a private pipe holding one `!`, and its main thread is
//!   woken with SIGTERM (what the MPM's own threads do to make it stop the child) to read it.
//!   The read end is recognised in the parent as the pipe that the MPM's `open_logs` hook creates
//!   (this module's hooks run just before and just after it).
//! - prefork: the child stops gracefully on `AP_SIG_GRACEFUL` (SIGUSR1) to its main thread, as
//!   the parent does it.

use std::ffi::{c_int, CStr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::bindings::{ap_show_mpm, apr_pool_t, server_rec, OK};
use crate::ffi_guard::guard;

/// A pipe's read end: descriptor, device and inode.
type PipeEnd = (RawFd, u64, u64);

/// Read ends of pipes before the MPM's `open_logs` (parent).
static BEFORE: Mutex<Vec<PipeEnd>> = Mutex::new(Vec::new());
/// The read ends the MPM's `open_logs` created: its pipes of death (parent; children inherit).
static PODS: Mutex<Vec<PipeEnd>> = Mutex::new(Vec::new());
/// This child's pipe of death (-1: none found).
static MINE: AtomicI32 = AtomicI32::new(-1);
/// This child's main thread (a `pthread_t`).
static MAIN: AtomicU64 = AtomicU64::new(0);
static PREFORK: AtomicBool = AtomicBool::new(false);

/// The read ends of pipes open in this process.
fn pipe_read_ends() -> Vec<PipeEnd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(pipe_read_end)
        .collect()
}

fn pipe_read_end(fd: RawFd) -> Option<PipeEnd> {
    // SAFETY: fstat and fcntl only inspect the descriptor (a closed one fails).
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return None;
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        (flags >= 0 && flags & libc::O_ACCMODE == libc::O_RDONLY)
            .then_some((fd, st.st_dev, st.st_ino))
    }
}

/// Notes the pipes open before the MPM makes its pipes of death (parent, each generation).
pub(crate) unsafe extern "C" fn before_mpm_open_logs(
    _pconf: *mut apr_pool_t,
    _plog: *mut apr_pool_t,
    _ptemp: *mut apr_pool_t,
    _s: *mut server_rec,
) -> c_int {
    guard("open_logs", OK as c_int, || {
        if crate::config::snapshot().recycles() {
            *BEFORE.lock().unwrap_or_else(|e| e.into_inner()) = pipe_read_ends();
        }
        OK as c_int
    })
}

/// Keeps the read ends the MPM's `open_logs` has just made: its pipes of death.
pub(crate) unsafe extern "C" fn after_mpm_open_logs(
    _pconf: *mut apr_pool_t,
    _plog: *mut apr_pool_t,
    _ptemp: *mut apr_pool_t,
    _s: *mut server_rec,
) -> c_int {
    guard("open_logs", OK as c_int, || {
        let mut pods = PODS.lock().unwrap_or_else(|e| e.into_inner());
        pods.clear();
        if crate::config::snapshot().recycles() {
            let before = BEFORE.lock().unwrap_or_else(|e| e.into_inner());
            pods.extend(pipe_read_ends().into_iter().filter(|p| !before.contains(p)));
        }
        OK as c_int
    })
}

/// Finds how this child can be stopped (from `child_init`, on the child's main thread).
pub(crate) fn child_init() {
    // SAFETY: plain queries; ap_show_mpm returns a static name.
    unsafe {
        MAIN.store(libc::pthread_self() as u64, Relaxed);
        PREFORK.store(
            CStr::from_ptr(ap_show_mpm()).to_bytes() == b"prefork",
            Relaxed,
        );
    }
    // The MPM closed the pipes of the other buckets' children: the one still open is this
    // one's. Anything else than exactly one is not understood, and not guessed at.
    let pods = PODS.lock().unwrap_or_else(|e| e.into_inner());
    let open: Vec<&PipeEnd> = pods
        .iter()
        .filter(|p| pipe_read_end(p.0).as_ref() == Some(*p))
        .collect();
    MINE.store(if open.len() == 1 { open[0].0 } else { -1 }, Relaxed);
}

/// Whether this child runs under the prefork MPM (one thread, which also takes its signals).
pub(crate) fn prefork() -> bool {
    PREFORK.load(Relaxed)
}

/// Asks the MPM to stop this child gracefully (from any thread).
pub(crate) fn stop_child() -> Result<(), String> {
    if PREFORK.load(Relaxed) {
        // To the main thread, not raised in the calling one: a helper thread (a child that could
        // not load its apps asks from one) blocks it, and it would stay pending there.
        // SAFETY: the main thread's pthread_t was recorded at child start and the thread lives
        // as long as the child; Apache handles the signal in prefork children.
        unsafe { libc::pthread_kill(MAIN.load(Relaxed) as libc::pthread_t, libc::SIGUSR1) };
        return Ok(());
    }
    let pod = MINE.load(Relaxed);
    if pod < 0 {
        return Err(
            "this MPM's pipe of death was not found (event, worker and prefork are supported)"
                .into(),
        );
    }
    let mut ends = [0 as c_int; 2];
    // SAFETY: the new pipe's descriptors are this function's until the read end replaces the
    // pipe of death (dup2 closes that copy atomically; the main thread, woken, reads the new one);
    // the main thread's pthread_t was recorded at child start and the thread lives as long as the
    // child.
    unsafe {
        if libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        let written = libc::write(ends[1], b"!".as_ptr().cast(), 1);
        libc::close(ends[1]);
        if written != 1 || libc::dup3(ends[0], pod, libc::O_CLOEXEC) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(ends[0]);
            return Err(format!("replacing the pipe of death: {e}"));
        }
        libc::close(ends[0]);
        libc::pthread_kill(MAIN.load(Relaxed) as libc::pthread_t, libc::SIGTERM);
    }
    Ok(())
}
