//! Configuration-time check: start Python and import every app in a short-lived child process, so
//! that a broken app or interpreter fails the server's config test (`nginx -t`, start, reload)
//! instead of leaving a server that accepts connections with no working process behind them.
//! The child keeps the server's own process free of Python (a fork after Python starts threads is
//! unsafe, and the server's master must stay small).

use std::io::Read;
use std::os::fd::FromRawFd;

use crate::app::AppSpec;
use crate::interpreter::{self, PythonSettings};

/// One problem found by the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// The interpreter did not start (bad home, wrong Python, ...).
    Interpreter(String),
    /// App number `.0` could not be imported or has no callable.
    App(usize, String),
    /// The check process itself failed.
    Process(String),
}

/// Credentials the check runs with, so it sees the files as the server's workers will.
#[derive(Debug, Clone, Copy)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// How the server will start its workers: the check child copies it, so that it imports the apps
/// as a worker would.
#[derive(Debug, Clone, Default)]
pub struct WorkerSetup {
    /// The user to switch to, when the server runs as root.
    pub credentials: Option<Credentials>,
    /// The workers' whole environment, when the server replaces it (nginx keeps only `env` ones).
    pub environment: Option<Vec<(String, String)>>,
}

/// Runs the check in a child process; returns every problem found.
pub fn check_apps(
    settings: &PythonSettings,
    specs: &[AppSpec],
    setup: &WorkerSetup,
) -> Result<(), Vec<CheckError>> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(vec![CheckError::Process(format!(
            "pipe(): {}",
            std::io::Error::last_os_error()
        ))]);
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: the server's process is single-threaded while it reads its configuration; the child
    // only runs `child_main`, which ends in `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: both descriptors were just created and are owned here.
        unsafe {
            libc::close(read_fd);
            libc::close(write_fd);
        }
        return Err(vec![CheckError::Process(format!("fork(): {err}"))]);
    }
    if pid == 0 {
        // SAFETY: in the child; the read end is not ours to use.
        unsafe { libc::close(read_fd) };
        let report = std::panic::catch_unwind(|| child_report(settings, specs, setup))
            .unwrap_or_else(|_| "Pthe check panicked\0".to_owned());
        // SAFETY: `write_fd` is the pipe's write end; _exit skips the server's atexit handlers
        // and stdio buffers, which belong to the parent.
        unsafe {
            crate::log_text::write_all(write_fd, report.as_bytes());
            libc::_exit(0);
        }
    }
    // SAFETY: the write end belongs to the child now; the read end is owned by the File below.
    unsafe { libc::close(write_fd) };
    let mut report = String::new();
    // SAFETY: `read_fd` is an open descriptor owned by nothing else.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(read_fd) };
    let read = pipe.read_to_string(&mut report);
    let status = wait_for(pid);
    let (mut errors, finished) = parse_report(&report);
    if let Err(e) = read {
        errors.push(CheckError::Process(format!(
            "reading the check's report: {e}"
        )));
    }
    if let Some(status) = status {
        if libc::WIFSIGNALED(status) {
            errors.push(CheckError::Process(format!(
                "the check process died from signal {} while starting Python or importing the app",
                libc::WTERMSIG(status)
            )));
        } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 && errors.is_empty() {
            errors.push(CheckError::Process(format!(
                "the check process exited with code {} while starting Python or importing the app",
                libc::WEXITSTATUS(status)
            )));
        }
    }
    if !finished && errors.is_empty() {
        // The child died before its last word (a crash while importing), whether or not a
        // SIGCHLD handler of the server reaped it before we could see its status.
        errors.push(CheckError::Process(
            "the check process ended before it finished starting Python and importing the apps"
                .into(),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn wait_for(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out pointer; `pid` is our child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Some(status);
        }
        if rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // Someone else reaped it (a SIGCHLD handler): the report in the pipe still stands.
        return None;
    }
}

/// Records separated by NUL: `I<message>`, `A<index>:<message>`, `P<message>`, and `K` last when
/// the child got through every app.
fn child_report(settings: &PythonSettings, specs: &[AppSpec], setup: &WorkerSetup) -> String {
    // Children an app starts at import are its own, not the server's (see `signals`).
    let _ = crate::signals::leave_children_to_their_parents();
    if let Some(environment) = &setup.environment {
        for (key, _) in std::env::vars_os() {
            std::env::remove_var(key);
        }
        for (key, value) in environment {
            std::env::set_var(key, value);
        }
    }
    if let Some(c) = setup.credentials {
        // SAFETY: plain syscalls in the single-threaded child; group first, while still root.
        let ok = unsafe { libc::setgid(c.gid) == 0 && libc::setuid(c.uid) == 0 };
        if !ok {
            return format!(
                "Pcannot switch to uid {} gid {}: {}\0",
                c.uid,
                c.gid,
                std::io::Error::last_os_error()
            );
        }
    }
    if let Err(e) = interpreter::initialize(settings) {
        return format!("I{e}\0");
    }
    interpreter::attach(|py| {
        let mut out = String::new();
        for (i, spec) in specs.iter().enumerate() {
            if let Err(e) = spec.load(py) {
                out.push_str(&format!("A{i}:{e}\0"));
            }
        }
        out.push_str("K\0");
        out
    })
}

/// The problems reported, and whether the child reached its end.
fn parse_report(report: &str) -> (Vec<CheckError>, bool) {
    let mut finished = false;
    let errors = report
        .split('\0')
        .filter(|r| !r.is_empty())
        .filter_map(|record| {
            let (kind, rest) = record.split_at(1);
            Some(match kind {
                "K" => {
                    finished = true;
                    return None;
                }
                "I" => CheckError::Interpreter(rest.to_owned()),
                "A" => match rest
                    .split_once(':')
                    .and_then(|(i, m)| Some((i.parse().ok()?, m)))
                {
                    Some((i, msg)) => CheckError::App(i, msg.to_owned()),
                    None => CheckError::Process(record.to_owned()),
                },
                _ => CheckError::Process(rest.to_owned()),
            })
        })
        .collect();
    (errors, finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trip() {
        assert_eq!(
            parse_report("Ibad home\0A1:Traceback: x:y\0Pboom\0"),
            (
                vec![
                    CheckError::Interpreter("bad home".into()),
                    CheckError::App(1, "Traceback: x:y".into()),
                    CheckError::Process("boom".into()),
                ],
                false
            )
        );
        assert_eq!(
            parse_report("A0:x\0K\0"),
            (vec![CheckError::App(0, "x".into())], true)
        );
        assert_eq!(parse_report("K\0"), (vec![], true));
        assert_eq!(parse_report(""), (vec![], false));
    }
}
