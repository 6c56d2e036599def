//! Whether a process exists: a slot in shared memory whose owner may have died without
//! clearing it (a crashed server process) is told apart from a live one.

/// Whether process `pid` exists (and may be signalled, or belongs to another user).
pub fn exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 sends nothing: it only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}
