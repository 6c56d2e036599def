//! Whether a process exists: a slot in shared memory whose owner may have died without
//! clearing it (a crashed server process) is told apart from a live one; and whether a process
//! watched since it was known to run has ended.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Whether process `pid` exists (and may be signalled, or belongs to another user).
pub fn exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 sends nothing: it only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// A process watched through a descriptor that refers to it alone (a pidfd, Linux 5.3): its end
/// is seen whatever became of its number since (taken by another process once reaped, or a
/// zombie not reaped yet), by any process that inherits the descriptor. Without pidfds, its
/// number is asked (`exists`).
#[derive(Debug)]
pub struct Watched {
    pid: libc::pid_t,
    fd: Option<OwnedFd>,
}

impl Watched {
    /// Watches `pid`, which runs now. The descriptor is close-on-exec.
    pub fn new(pid: libc::pid_t) -> Watched {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = (fd >= 0).then(|| {
            // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
            unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
        });
        Watched { pid, fd }
    }

    /// Whether the process still runs (a pidfd is readable once it has ended).
    pub fn running(&self) -> bool {
        let Some(fd) = &self.fd else {
            return exists(self.pid);
        };
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_process_is_running_until_it_ends_reaped_or_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let watched = Watched::new(child.id() as libc::pid_t);
        assert!(watched.fd.is_some(), "this kernel has pidfds");
        assert!(watched.running());
        child.kill().unwrap();
        // A zombie until reaped: its number still exists, its end is seen all the same.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while watched.running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!watched.running());
        assert!(exists(child.id() as libc::pid_t), "not reaped yet");
        child.wait().unwrap();
        assert!(!watched.running());
    }
}
