//! Processes an app forks (`os.fork()`, `multiprocessing`'s fork): the server's sockets are not
//! theirs, and one that returns from the app into the server ends there.
//!
//! A forked child that keeps the server's listening sockets keeps the port bound after the
//! server stops or reloads; one that keeps a client's connection keeps it open after the
//! server has closed it (an HTTP/1.0 client waits for the end of the response until the child
//! exits). A child that returns from the app would run the server's code with none of its
//! other threads: it can only hang, holding what it inherited.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The process that serves requests (set when its interpreter starts).
static SERVER_PID: AtomicI32 = AtomicI32::new(0);
/// Set in every child forked after that: a load, where a getpid() would be a system call.
static FORKED: AtomicBool = AtomicBool::new(false);

/// Records the calling process as the server's.
pub fn this_process_serves() {
    // SAFETY: getpid has no preconditions.
    SERVER_PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| in_every_forked_child(mark_forked));
}

/// In a forked child: an atomic store, async-signal-safe.
extern "C" fn mark_forked() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Whether this is a process the app forked, not the server's own.
pub fn in_forked_child() -> bool {
    FORKED.load(Ordering::Relaxed)
}

/// Runs `handler` in every child forked from now on, in the child before `fork()` returns
/// there: only async-signal-safe work (the child's one thread may have forked while another
/// held a lock). For each process, once.
pub fn in_every_forked_child(handler: extern "C" fn()) {
    // SAFETY: registers a plain function; it runs in forked children only.
    unsafe { libc::pthread_atfork(None, None, Some(handler)) };
}

/// Ends a forked child that returned from the app into the server (called with the GIL held,
/// where the server takes the app's result). Said on stderr: the server's log machinery lives
/// in threads the child does not have, and stderr is the server's error log.
pub fn exit_if_forked_child(_py: pyo3::Python<'_>, interface: &str) {
    if !in_forked_child() {
        return;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let line = format!(
        "{interface}: process {pid}, forked by the application, returned from it into the \
         server and exits (a forked child should end with os._exit())\n"
    );
    // A plain write(2): a lock of stderr's that another thread held at the fork stays held.
    // SAFETY: writes `line`'s bytes to the error log's descriptor.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    // SAFETY: ends this process at once; nothing of the server's may run in it.
    unsafe { libc::_exit(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_not_a_forked_child_and_its_child_is() {
        assert!(!in_forked_child(), "before the server is known: no");
        this_process_serves();
        assert!(!in_forked_child());
        // SAFETY: the child only reads an atomic and calls getpid and _exit.
        match unsafe { libc::fork() } {
            // SAFETY: in the child: _exit ends it without running the test harness.
            0 => unsafe { libc::_exit(if in_forked_child() { 7 } else { 1 }) },
            pid => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(libc::WEXITSTATUS(status), 7);
            }
        }
    }
}
