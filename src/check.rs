//! Configuration-time check: start Python and import every app in a short-lived child process, so
//! that a broken app or interpreter fails the server's config test (`nginx -t`, start, reload)
//! instead of leaving a server that accepts connections with no working process behind them.
//! The child keeps the server's own process free of Python (a fork after Python starts threads is
//! unsafe, and the server's master must stay small).
//!
//! The child runs with the workers' user, groups and environment, none of the server's open
//! descriptors (listening sockets, worker channels during a reload), and a time limit: an import
//! that blocks fails the check, naming the app, instead of hanging `nginx -t` or a reload.
//! It leaves nothing behind: it runs in a process group of its own, and processes the apps
//! started while being imported (a `multiprocessing.Process`, a bare `os.fork()`) that are still
//! running once it ends are stopped with it.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

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
#[derive(Debug, Clone)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// The user's name: its supplementary groups are taken (`initgroups`), as the server does
    /// for its workers. Without it the child keeps `gid` alone.
    pub user: Option<CString>,
}

/// How the server will start its workers: the check child copies it, so that it imports the apps
/// as a worker would.
#[derive(Debug, Clone, Default)]
pub struct WorkerSetup {
    /// The user to switch to, when the server runs as root. A root server that cannot say whose
    /// the workers are gets no check run as root: the check fails.
    pub credentials: Option<Credentials>,
    /// The workers' whole environment, when the server replaces it (nginx keeps only `env` ones).
    pub environment: Option<Vec<(String, String)>>,
    /// How long starting Python and importing every app may take (zero: [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// The event loop ASGI apps run on (their lifespan startup runs on one in the check).
    pub asgi_loop: crate::asgi::LoopKind,
    /// How long an ASGI app's lifespan shutdown may take in the check, as in the workers (zero:
    /// [`interpreter::DEFAULT_SHUTDOWN_TIMEOUT`]); one that takes longer is cancelled and does
    /// not fail the check.
    pub shutdown_timeout: Duration,
    /// The directory the workers change to before they import the apps (nginx's
    /// `working_directory`): an app's relative paths (`StaticFiles(directory="static")`, a
    /// SQLite file) must resolve in the check as they will in the workers.
    pub working_directory: Option<std::path::PathBuf>,
    /// The workers' file mode mask, set before the imports (None: the check's inherited one):
    /// what an app creates at import in the check (a cache directory, a log file) gets the
    /// workers' modes, not those of a daemonized server's mask of 0.
    pub umask: Option<libc::mode_t>,
}

/// How long the check may take unless the server's configuration says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the check in a child process; returns every problem found.
pub fn check_apps(
    settings: &PythonSettings,
    specs: &[AppSpec],
    setup: &WorkerSetup,
) -> Result<(), Vec<CheckError>> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2() writes; close-on-exec, so that no
    // program the server (or the app) runs meanwhile inherits them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(vec![CheckError::Process(format!(
            "pipe(): {}",
            std::io::Error::last_os_error()
        ))]);
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: plain syscall.
    let parent = unsafe { libc::getpid() };
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
        // SAFETY: in the child, single-threaded; the read end is not ours to use, and nothing of
        // the server's (listening sockets, channels, logs) is kept but stdin/stdout/stderr and
        // the report pipe, moved to descriptor 3.
        let report_fd = unsafe {
            // The parent stops the group once the check ends; a parent killed meanwhile
            // (Ctrl-C on `nginx -t`) takes the check with it, not left importing alone.
            libc::setpgid(0, 0);
            die_with_parent(parent);
            // Orphans of the processes the apps start (a double-forked daemon) come to the
            // check's process, which ends them with its own children (`end_descendants`).
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
            interpreter::before_deadline_exit(end_descendants);
            // A process an app forks while being imported must not hold the report open: the
            // parent reads it to its end.
            libc::pthread_atfork(None, None, Some(close_report_in_child));
            libc::close(read_fd);
            // Close-on-exec still: a program the app spawns (posix_spawn runs no fork handler)
            // must not hold the report open either.
            let fd = if write_fd == REPORT_FD {
                REPORT_FD
            } else {
                libc::dup3(write_fd, REPORT_FD, libc::O_CLOEXEC)
            };
            libc::close_range(4, libc::c_uint::MAX, 0);
            REPORT_OPEN.store(fd == REPORT_FD, std::sync::atomic::Ordering::SeqCst);
            fd
        };
        crate::server_log::to_standard_error_only();
        let report = std::panic::catch_unwind(|| child_report(settings, specs, setup, report_fd))
            .unwrap_or_else(|_| "Pthe check panicked\0".to_owned());
        crate::log_text::write_all(report_fd, report.as_bytes());
        // From here descriptor 3 may be anything the apps' exit opens: forks leave it be.
        REPORT_OPEN.store(false, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: the report pipe's write end, written in full: the parent has its answer.
        unsafe { libc::close(report_fd) };
        // The apps' atexit handlers run, as in any Python process that imported them and ends;
        // what they do cannot change the check's answer.
        let _ =
            std::panic::catch_unwind(|| interpreter::exit_as_python_would(shutdown_timeout(setup)));
        end_descendants();
        // SAFETY: _exit skips the server's own atexit handlers and stdio buffers, which belong
        // to the parent.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the write end belongs to the child now; the read end is owned by the File below.
    // The child's group is set here too, so that it is in place whichever of the two runs first.
    unsafe {
        libc::close(write_fd);
        libc::setpgid(pid, pid);
    }
    // SAFETY: `read_fd` is an open descriptor owned by nothing else.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(read_fd) };
    let timeout = if setup.timeout.is_zero() {
        DEFAULT_TIMEOUT
    } else {
        setup.timeout
    };
    let (report, read) = read_report(&mut pipe, read_fd, timeout, shutdown_grace(setup));
    if read == Reading::TimedOut {
        // SAFETY: `pid` is our child; it is killed and reaped below.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let (mut errors, finished) = parse_report(&report);
    // A child that got through every app runs their atexit handlers, bounded by the shutdown
    // timeout; a margin later it is killed.
    let status = wait_for(pid, shutdown_timeout(setup) + EXIT_MARGIN);
    match read {
        Reading::Done => {}
        Reading::Failed(e) => errors.push(CheckError::Process(format!(
            "reading the check's report: {e}"
        ))),
        Reading::TimedOut => {
            let within = timeout.as_secs_f64();
            errors.push(match last_started(&report) {
                Some(Stage::Import(i)) => CheckError::App(
                    i,
                    format!("importing it took longer than {within} s (blocked while importing?); the check process was killed"),
                ),
                Some(Stage::Lifespan(i)) => CheckError::App(
                    i,
                    format!("its lifespan startup did not finish within {within} s (an await that never ends, or a call that blocks the event loop); the check process was killed"),
                ),
                Some(Stage::Shutdown(i)) => CheckError::App(
                    i,
                    format!(
                        "its lifespan shutdown, after a startup that completed, did not end within {} s (a call that blocks the event loop, which cancelling cannot interrupt); the check process was killed",
                        shutdown_grace(setup).as_secs_f64()
                    ),
                ),
                None => CheckError::Interpreter(format!(
                    "starting Python: it took longer than {within} s; the check process was killed"
                )),
            });
            return Err(errors);
        }
    }
    let stage = last_started(&report);
    // An app whose lifespan shutdown ends its process (Chainlit's server app calls os._exit(0)
    // there, so that AnyIO's threads cannot hold it) was imported and started: the shutdown
    // decides nothing, and a worker's exit ends the same way. Only the last app's, though:
    // the apps after it went unchecked.
    let ended_by_last_shutdown = matches!(stage, Some(Stage::Shutdown(i)) if i + 1 == specs.len())
        && status.is_some_and(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0);
    if !finished && !ended_by_last_shutdown && errors.is_empty() {
        let (app, during) = match stage {
            None => (None, "while starting Python"),
            Some(Stage::Import(i)) => (Some(i), "while importing it"),
            Some(Stage::Lifespan(i)) => (Some(i), "during its lifespan startup"),
            Some(Stage::Shutdown(i)) if i + 1 == specs.len() => {
                (Some(i), "during its lifespan shutdown, after a startup that completed")
            }
            Some(Stage::Shutdown(i)) => (Some(i), "during its lifespan shutdown, after a startup that completed, before the apps after it were checked"),
        };
        // Whether or not a SIGCHLD handler of the server reaped the child before we could see
        // its status, it died before its last word.
        let what = match status {
            Some(s) if libc::WIFSIGNALED(s) => {
                format!(
                    "the check process died from signal {} {during}",
                    libc::WTERMSIG(s)
                )
            }
            Some(s) if libc::WIFEXITED(s) => {
                format!(
                    "the check process exited with code {} {during}",
                    libc::WEXITSTATUS(s)
                )
            }
            _ => format!("the check process ended {during}"),
        };
        errors.push(match app {
            Some(i) => CheckError::App(i, what),
            None => CheckError::Process(what),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// How reading the report ended.
#[derive(Debug, PartialEq, Eq)]
enum Reading {
    Done,
    TimedOut,
    Failed(String),
}

/// Reads the child's report until it closes the pipe or `timeout` passes. An app's lifespan
/// shutdown (from its `E` record to the next record) decides nothing and is bounded on its own,
/// by `shutdown_grace` from its start: its time does not count against `timeout`.
fn read_report(
    pipe: &mut std::fs::File,
    fd: libc::c_int,
    timeout: Duration,
    shutdown_grace: Duration,
) -> (String, Reading) {
    let mut deadline = Instant::now() + timeout;
    let mut shutdown_since: Option<Instant> = None;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let now_deadline = shutdown_since.map_or(deadline, |since| since + shutdown_grace);
        let left = now_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (
                String::from_utf8_lossy(&bytes).into_owned(),
                Reading::TimedOut,
            );
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, libc::c_int::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return (
                String::from_utf8_lossy(&bytes).into_owned(),
                Reading::Failed(e.to_string()),
            );
        }
        if ready == 0 {
            continue;
        }
        match pipe.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&bytes).into_owned(), Reading::Done),
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                let now = Instant::now();
                match (shutdown_since, in_shutdown(&bytes)) {
                    (None, true) => shutdown_since = Some(now),
                    (Some(since), false) => {
                        deadline += now - since;
                        shutdown_since = None;
                    }
                    _ => {}
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return (
                    String::from_utf8_lossy(&bytes).into_owned(),
                    Reading::Failed(e.to_string()),
                )
            }
        }
    }
}

/// What the child was doing last for an app.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// Importing app `i` (its `S` record).
    Import(usize),
    /// Running app `i`'s lifespan startup (its `L` record).
    Lifespan(usize),
    /// Running app `i`'s lifespan shutdown, its startup done (its `E` record).
    Shutdown(usize),
}

/// What the child started last, if anything.
fn last_started(report: &str) -> Option<Stage> {
    report.rsplit('\0').find_map(|r| {
        let (kind, i) = r.split_at_checked(1)?;
        let i = i.parse().ok()?;
        match kind {
            "S" => Some(Stage::Import(i)),
            "L" => Some(Stage::Lifespan(i)),
            "E" => Some(Stage::Shutdown(i)),
            _ => None,
        }
    })
}

/// Whether the child's last whole record says that an app's lifespan shutdown is running.
fn in_shutdown(report: &[u8]) -> bool {
    let whole = match report.iter().rposition(|b| *b == 0) {
        Some(end) => &report[..end],
        None => return false,
    };
    let last = whole.rsplit(|b| *b == 0).next().unwrap_or_default();
    last.first() == Some(&b'E')
}

/// How long after its shutdown timeout a check child that finished its report may still run its
/// apps' atexit handlers (its own deadline ends it first).
const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// What an app's lifespan shutdown in the check may take: its timeout, the second the driver
/// then gives cancelled tasks, and a margin.
fn shutdown_grace(setup: &WorkerSetup) -> Duration {
    shutdown_timeout(setup) + Duration::from_secs(1) + EXIT_MARGIN
}

fn shutdown_timeout(setup: &WorkerSetup) -> Duration {
    if setup.shutdown_timeout.is_zero() {
        interpreter::DEFAULT_SHUTDOWN_TIMEOUT
    } else {
        setup.shutdown_timeout
    }
}

/// Has the check child killed when `parent` (the server) ends; ends it now if that already
/// happened.
fn die_with_parent(parent: libc::pid_t) {
    // SAFETY: plain syscalls in the single-threaded child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
}

/// The report's descriptor in the check child (see `check_apps`).
const REPORT_FD: libc::c_int = 3;

/// Whether descriptor 3 is the report pipe (in the check child, until the report is written).
static REPORT_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs in every process forked from the check child, before the fork returns there.
extern "C" fn close_report_in_child() {
    if REPORT_OPEN.load(std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: closes the inherited copy of the report pipe; nothing in the new process
        // uses it.
        unsafe { libc::close(REPORT_FD) };
    }
}

/// The child's status once it ends; killed when it has not within `within`. Then what is left
/// in its group is stopped (the group's id stays taken while it has members, so it cannot
/// name another's).
fn wait_for(pid: libc::pid_t, within: Duration) -> Option<libc::c_int> {
    let deadline = Instant::now() + within;
    let mut status = 0;
    let ended = loop {
        let flags = if Instant::now() < deadline {
            libc::WNOHANG
        } else {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            0
        };
        // SAFETY: `status` is a valid out pointer; `pid` is our child.
        let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
        if rc == pid {
            break Some(status);
        }
        if rc == 0 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // Someone else reaped it (a SIGCHLD handler): the report in the pipe still stands.
        break None;
    };
    stop_group(pid);
    ended
}

/// Ends the processes the check child still has (in the check child, as it ends): its children
/// and the orphans it adopted as their subreaper, those in a session of their own included
/// (`start_new_session`, a daemon), which the parent's stop of the check's process group misses
/// and which would hold `nginx -t`'s output open. SIGTERM, then SIGKILL for those still there a
/// second later; reaped.
fn end_descendants() {
    // SAFETY: plain syscall.
    let me = unsafe { libc::getpid() };
    let term_until = Instant::now() + Duration::from_secs(1);
    let give_up = term_until + Duration::from_secs(1);
    let mut termed = std::collections::HashSet::new();
    loop {
        // SAFETY: reaps any ended child of this process; a null status pointer is allowed.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        let children = children_of(me);
        if children.is_empty() || Instant::now() >= give_up {
            return;
        }
        let late = Instant::now() >= term_until;
        for pid in children {
            if late || termed.insert(pid) {
                let sig = if late { libc::SIGKILL } else { libc::SIGTERM };
                // SAFETY: `pid` was a child of this process a moment ago; only a thread of the
                // app's reaping it just now would free its id (the check child ends next).
                unsafe { libc::kill(pid, sig) };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The processes whose parent is `parent` (from /proc).
fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: libc::pid_t = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let ppid: libc::pid_t = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

/// Stops the processes left in the check's group: SIGTERM, then SIGKILL for those still there
/// a second later.
fn stop_group(pgid: libc::pid_t) {
    // SAFETY: signal 0 only asks whether the group has members.
    let members = || unsafe { libc::killpg(pgid, 0) } == 0;
    if !members() {
        return;
    }
    // SAFETY: the group is the check's own (see `check_apps`).
    unsafe { libc::killpg(pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(1);
    while members() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if members() {
        // SAFETY: as above.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
}

/// The environment variable set in the check's process (to `1`), not in the workers'.
pub const CHECK_MARK: &str = "NGX_WSGI_CONFIG_CHECK";

/// Records separated by NUL: `I<message>`, `A<index>:<message>`, `P<message>`, and `K` last when
/// the child got through every app. `S<index>` is written to `progress` at once as app `index`
/// starts importing, so that the parent can name an import that never ends.
fn child_report(
    settings: &PythonSettings,
    specs: &[AppSpec],
    setup: &WorkerSetup,
    progress: libc::c_int,
) -> String {
    // Children an app starts at import are its own, not the server's (see `signals`).
    let _ = crate::signals::leave_children_to_their_parents();
    let _ = crate::signals::default_sigsys_for_children();
    if let Some(environment) = &setup.environment {
        for (key, _) in std::env::vars_os() {
            std::env::remove_var(key);
        }
        for (key, value) in environment {
            std::env::set_var(key, value);
        }
    }
    // The app's way to tell the check from a worker: a scheduler or a start-up notification
    // it starts at import need not run in a process that ends once imported.
    std::env::set_var(CHECK_MARK, "1");
    if let Some(c) = &setup.credentials {
        // SAFETY: plain syscall.
        let parent = unsafe { libc::getppid() };
        if let Err(e) = switch_user(c) {
            return format!("P{e}\0");
        }
        // Linux forgets the parent-death signal when the credentials change: set again.
        die_with_parent(parent);
    // SAFETY: plain syscall.
    } else if unsafe { libc::geteuid() } == 0 {
        return "Pthe workers' user is unknown: the apps are not imported as root\0".into();
    }
    if let Some(dir) = &setup.working_directory {
        if let Err(e) = std::env::set_current_dir(dir) {
            return format!(
                "Pthe workers cannot enter their working directory \"{}\": {e}\0",
                dir.display()
            );
        }
    }
    if let Some(mask) = setup.umask {
        // SAFETY: plain syscall; the check's process is single-threaded here.
        unsafe { libc::umask(mask) };
    }
    if let Err(e) = interpreter::initialize_for_check(settings) {
        return format!("I{e}\0");
    }
    interpreter::attach(|py| {
        let mut out = String::new();
        for (i, spec) in specs.iter().enumerate() {
            crate::log_text::write_all(progress, format!("S{i}\0").as_bytes());
            match spec.load(py) {
                Err(e) => out.push_str(&format!("A{i}:{e}\0")),
                // An ASGI app's startup runs here too: one that fails is refused before the
                // server takes the configuration, while the running workers keep serving.
                Ok(app) if spec.kind == crate::app::AppKind::Asgi => {
                    crate::log_text::write_all(progress, format!("L{i}\0").as_bytes());
                    if let Some(e) = crate::asgi::event_loop::check_lifespan(
                        py,
                        app.bind(py),
                        setup.asgi_loop,
                        shutdown_timeout(setup),
                        progress,
                        format!("E{i}\0").as_bytes(),
                    ) {
                        out.push_str(&format!("A{i}:{e}\0"));
                    }
                }
                Ok(_) => {}
            }
        }
        out.push_str("K\0");
        out
    })
}

/// Takes the workers' groups, then their group and user (in that order: each step needs the
/// privileges the next one drops).
fn switch_user(c: &Credentials) -> Result<(), String> {
    let failed = |what: &str| {
        format!(
            "cannot switch to {what}: {}",
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: plain syscalls in the single-threaded child; the name is a valid C string.
    unsafe {
        let groups_ok = match &c.user {
            Some(name) => libc::initgroups(name.as_ptr(), c.gid) == 0,
            None => libc::setgroups(1, &c.gid) == 0,
        };
        if !groups_ok {
            return Err(failed(&format!(
                "the groups of the workers' user (gid {})",
                c.gid
            )));
        }
        if libc::setgid(c.gid) != 0 {
            return Err(failed(&format!("gid {}", c.gid)));
        }
        if libc::setuid(c.uid) != 0 {
            return Err(failed(&format!("uid {}", c.uid)));
        }
    }
    Ok(())
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
                "S" | "L" | "E" => return None,
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
        assert_eq!(parse_report("S0\0S1\0K\0"), (vec![], true));
        assert_eq!(parse_report("S0\0L0\0K\0"), (vec![], true));
        assert_eq!(last_started("S0\0S1\0"), Some(Stage::Import(1)));
        assert_eq!(last_started("S0\0L0\0"), Some(Stage::Lifespan(0)));
        assert_eq!(last_started("S0\0L0\0S1\0"), Some(Stage::Import(1)));
        assert_eq!(last_started("Ibad\0"), None);
        assert_eq!(last_started("S0\0L0\0E0\0"), Some(Stage::Shutdown(0)));
        assert_eq!(parse_report("S0\0L0\0E0\0K\0"), (vec![], true));
        assert!(in_shutdown(b"S0\0L0\0E0\0"));
        assert!(in_shutdown(b"S0\0L0\0E0\0S"));
        assert!(!in_shutdown(b"S0\0L0\0E0\0S1\0"));
        assert!(!in_shutdown(b"S0\0L0\0E0\0K\0"));
        assert!(!in_shutdown(b"S0\0L0\0E"));
        assert!(!in_shutdown(b""));
        assert_eq!(parse_report(""), (vec![], false));
    }
}
