//! The module's own helper threads (the core's watchdog, Apache's deadline thread) live inside a
//! server process whose signals belong to the server's threads: they are started with every
//! signal blocked, whichever thread starts them (nginx's event loop has its signals unblocked).

use std::io;
use std::thread::JoinHandle;

/// Spawns a thread named `name` that runs `f` with all signals blocked.
pub fn spawn_quiet(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // SAFETY: a full set built by sigfillset, applied to the calling thread only.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
            f()
        })
}
