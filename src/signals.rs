//! Signals belong to the server: nginx and Apache install their handlers before the interpreter
//! starts, and an app must not take them away.
//!
//! - An app that calls `signal.signal(SIGTERM, ...)` (or SIGINT, SIGHUP, SIGPIPE...) while it is
//!   imported would replace the server's handler in that process; its Python handler could never
//!   run anyway (Python runs signal handlers on the main thread, which is the server's event
//!   loop), and a SIGPIPE set back to its default would kill the process at the first write to a
//!   closed connection. [`ServerSignals`] notes the handlers before the apps are imported and
//!   puts back any the import changed, saying which.
//! - Children an app starts are the app's: the server's SIGCHLD handler (nginx reaps every child
//!   with `waitpid(-1)`, Apache's children ignore the signal, which makes the kernel reap them)
//!   would take their exit status from Python before `subprocess` can read it. The server's
//!   request-serving processes start no children of their own, so there SIGCHLD gets its
//!   default disposition ([`leave_children_to_their_parents`]).
//! - A child the app forks without `exec` (`os.fork`, `multiprocessing`'s fork) would inherit
//!   the server's handlers: nginx's SIGTERM handler only sets a flag, so `Process.terminate()`
//!   would not end it. And the server's threads that run Python block signals (nginx's and this
//!   module's pool threads, Apache's MPM threads), a mask every child inherits, even across
//!   `exec`: a `sh -c 'kill $$'` would never see its signal. Forked children get default
//!   handlers and an empty mask back ([`reset_in_forked_children`]); children started with
//!   `vfork` or `posix_spawn`, which skip fork handlers, get the empty mask otherwise
//!   ([`crate::child_signal_mask`]).

use std::mem::MaybeUninit;

/// What a thread's own fault raises: the servers' threads keep them deliverable.
pub(crate) const FAULTS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGABRT,
];

/// Signals a process can catch (1..=31; real-time signals are left alone).
const CATCHABLE: std::ops::RangeInclusive<libc::c_int> = 1..=31;

/// The server's signal handlers, and the signal mask of the thread that imports the apps (the
/// server's main thread), as they were before the apps were imported.
pub struct ServerSignals {
    saved: Vec<(libc::c_int, libc::sigaction)>,
    mask: libc::sigset_t,
}

impl ServerSignals {
    /// Notes the current disposition of every catchable signal, and the calling thread's mask.
    pub fn note() -> ServerSignals {
        let saved = CATCHABLE
            .filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
            .filter_map(|sig| current(sig).map(|action| (sig, action)))
            .collect();
        ServerSignals {
            saved,
            mask: thread_mask(),
        }
    }

    /// Puts the calling thread's signal mask back as [`note`](Self::note) found it; returns the
    /// names of the signals whose blocking had changed. An app that blocks SIGQUIT and SIGTERM
    /// while it is imported (`signal.pthread_sigmask`, for its own threads to inherit) blocked
    /// them in the server's main thread, where nginx takes them: the worker no longer stopped.
    pub fn restore_mask(&self) -> Vec<&'static str> {
        let now = change_thread_mask(libc::SIG_SETMASK, &self.mask);
        CATCHABLE
            // SAFETY: both sets are valid; sigismember only reads them.
            .filter(|&sig| unsafe {
                libc::sigismember(&now, sig) != libc::sigismember(&self.mask, sig)
            })
            .map(name)
            .collect()
    }

    /// Puts back the handlers changed since [`note`](Self::note); returns the names of the
    /// signals that were changed. A fault's handler written in C stays (`faulthandler.enable()`:
    /// it writes the Python stacks of a crash in a C extension, then hands the fault on to the
    /// handler it replaced); one of Python's (`python_faults`) does not: it would return to the
    /// faulting instruction for ever.
    pub fn restore(&self, python_faults: &[libc::c_int]) -> Vec<&'static str> {
        let mut changed = Vec::new();
        for (sig, before) in &self.saved {
            let Some(now) = current(*sig) else { continue };
            if now.sa_sigaction == before.sa_sigaction {
                continue;
            }
            if FAULTS.contains(sig) && !python_faults.contains(sig) {
                continue;
            }
            // SAFETY: `before` is a disposition the kernel gave us for this signal.
            unsafe { libc::sigaction(*sig, before, std::ptr::null_mut()) };
            changed.push(name(*sig));
        }
        changed
    }
}

fn current(sig: libc::c_int) -> Option<libc::sigaction> {
    let mut action = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: reads the disposition into a zeroed struct the kernel fills.
    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), action.as_mut_ptr()) };
    // SAFETY: filled by the successful call above.
    (rc == 0).then(|| unsafe { action.assume_init() })
}

/// SIGCHLD back to its default disposition in this process, so that the app's children stay
/// waitable by whoever started them (`subprocess`, `os.waitpid`, `multiprocessing`).
pub fn leave_children_to_their_parents() -> std::io::Result<()> {
    to_default(libc::SIGCHLD)?;
    CHILD_SIGNAL_IGNORED.store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Blocks SIGCHLD in the calling thread (the server's event loop, once the apps are loaded),
/// where it has its default disposition: a child's SIGCHLD that is not dropped as it is sent
/// (its parent thread blocked it for a moment, as `fork_exec` does around `vfork`, and the
/// child was quick to end) goes to a thread that does not block it, and there interrupted
/// nginx's `epoll_wait` (an `[info]` line). Pending for the process then, it does nothing. The
/// app's children never get this mask: they start with an empty one (`child_signal_mask`).
pub fn keep_child_signals_from_this_thread() {
    if !CHILD_SIGNAL_IGNORED.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    // SAFETY: initialises a set and adds a valid signal number to it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    };
    change_thread_mask(libc::SIG_BLOCK, &set);
}

/// SIGCHLD has its default disposition (ignored) in this process: the module's threads leave it
/// unblocked. A child's SIGCHLD goes to the thread that started it; blocked there, it waited
/// for a thread that does not block it, nginx's event loop, whose `epoll_wait` it interrupted
/// (an `[info] epoll_wait() failed (4: Interrupted system call)` per child an app ran), where
/// an ignored signal that no thread blocks is dropped as it is sent.
static CHILD_SIGNAL_IGNORED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The mask of the module's threads: every signal but their own faults, and SIGCHLD where it is
/// ignored.
fn helper_mask() -> libc::sigset_t {
    let mut mask = signal_set(&FAULTS);
    if CHILD_SIGNAL_IGNORED.load(std::sync::atomic::Ordering::Acquire) {
        // SAFETY: takes a valid signal number out of an initialised set.
        unsafe { libc::sigdelset(&mut mask, libc::SIGCHLD) };
    }
    mask
}

/// SIGSYS back to its default disposition in this process. nginx ignores it (for the BSDs,
/// where a system call the kernel lacks raises it), and an ignored signal stays ignored across
/// `exec`: every program the app runs would ignore it, as none does under plain Python. On Linux
/// only a seccomp filter raises it (one that traps, with no handler installed), and an ignored
/// one is made fatal by the kernel anyway: the default costs the server nothing.
pub fn default_sigsys_for_children() -> std::io::Result<()> {
    to_default(libc::SIGSYS)
}

fn to_default(sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with SIG_DFL is a valid disposition.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// After every `fork()` of this process, the child's caught signals go back to their default
/// action (ignored ones stay ignored, as `exec` would leave them). Once per process.
///
/// The forking thread blocks every signal across the `fork()` itself, whatever its own mask:
/// a thread an app unblocked signals in (`multiprocessing`'s resource tracker leaves SIGINT and
/// SIGTERM unblocked in the thread that started it) would otherwise fork a child that takes a
/// signal sent at once (`p.start(); p.terminate()`) with the server's handler, before its
/// handlers are reset, and runs on.
pub fn reset_in_forked_children() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers plain functions, run around every fork of this process.
        unsafe {
            libc::pthread_atfork(
                Some(block_all_before_fork),
                Some(unblock_after_fork),
                Some(defaults_in_child),
            )
        };
    });
}

thread_local! {
    /// The forking thread's own mask, while it forks.
    static MASK_BEFORE_FORK: std::cell::Cell<Option<libc::sigset_t>> =
        const { std::cell::Cell::new(None) };
}

/// In the parent, just before `fork()`.
extern "C" fn block_all_before_fork() {
    let old = change_thread_mask(libc::SIG_BLOCK, &signal_set(&[]));
    let _ = MASK_BEFORE_FORK.try_with(|m| m.set(Some(old)));
}

/// In the parent, just after `fork()`: the thread's own mask back.
extern "C" fn unblock_after_fork() {
    if let Ok(Some(old)) = MASK_BEFORE_FORK.try_with(|m| m.take()) {
        change_thread_mask(libc::SIG_SETMASK, &old);
    }
}

/// In a freshly forked child: only async-signal-safe calls (sigaction, sigprocmask). The
/// handlers go first: a signal sent as soon as the child existed (`p.start(); p.terminate()`)
/// waits, blocked by the mask the child inherited, and once the mask is cleared it meets the
/// default action, not the server's handler (nginx's would only set a flag).
extern "C" fn defaults_in_child() {
    for sig in CATCHABLE {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let Some(now) = current(sig) else { continue };
        if now.sa_sigaction == libc::SIG_DFL || now.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: a zeroed sigaction with SIG_DFL is a valid disposition.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    change_thread_mask(libc::SIG_SETMASK, &no_signals());
}

/// Blocks again, in the calling helper thread, the signals [`spawn_helper`] blocked: an app may
/// have unblocked some (`multiprocessing`'s resource tracker leaves SIGINT and SIGTERM so in
/// the thread that started it), and a signal for the process taken there would run the
/// server's handler without waking its event loop. Sets the whole mask (nginx's own pool
/// threads block SIGCHLD too). One system call; run between jobs.
pub fn block_server_signals() {
    change_thread_mask(libc::SIG_SETMASK, &helper_mask());
}

/// Puts the calling server thread's signal mask back, when dropped, as it was before an app
/// first ran on the thread: for a server's own threads (Apache's workers), where an app's
/// changes (the resource tracker's unblocked SIGINT and SIGTERM) would outlive its request and a
/// signal for the process could run the server's handler on a thread that does not act on it.
/// One system call per request once the thread's mask is noted.
pub struct KeptThreadMask(libc::sigset_t);

impl KeptThreadMask {
    pub fn note() -> KeptThreadMask {
        thread_local! {
            static NOTED: std::cell::Cell<Option<libc::sigset_t>> = const { std::cell::Cell::new(None) };
        }
        KeptThreadMask(NOTED.with(|noted| {
            noted.get().unwrap_or_else(|| {
                let mask = thread_mask();
                noted.set(Some(mask));
                mask
            })
        }))
    }
}

impl Drop for KeptThreadMask {
    fn drop(&mut self) {
        change_thread_mask(libc::SIG_SETMASK, &self.0);
    }
}

/// Every signal but those of `except`.
fn signal_set(except: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: fills a zeroed set, then takes signal numbers out of it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for &sig in except {
            libc::sigdelset(&mut set, sig);
        }
        set
    }
}

/// The empty signal set.
pub(crate) fn no_signals() -> libc::sigset_t {
    // SAFETY: empties a zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// The calling thread's signal mask.
pub(crate) fn thread_mask() -> libc::sigset_t {
    change_thread_mask(libc::SIG_BLOCK, &no_signals())
}

/// Changes the calling thread's signal mask (`how`: `SIG_BLOCK` adds `set`, `SIG_SETMASK`
/// makes it the mask) and returns the mask it had. Async-signal-safe.
pub(crate) fn change_thread_mask(how: libc::c_int, set: &libc::sigset_t) -> libc::sigset_t {
    // SAFETY: `set` is a valid set; `old` is written by the call.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(how, set, &mut old);
        old
    }
}

/// Starts a helper thread (a pool thread, the watchdog, a deadline thread) with the signals that
/// are the server's business blocked from its first instruction, as nginx does in its own pool
/// threads, so that they reach the thread that handles them; faults a thread causes itself stay
/// deliverable. The calling thread's mask is left as it was.
pub fn spawn_helper<F>(
    name: &str,
    stack_size: Option<usize>,
    f: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let mut builder = std::thread::Builder::new().name(name.into());
    if let Some(size) = stack_size {
        builder = builder.stack_size(size);
    }
    // A new thread inherits its creator's mask: the caller's own comes back once it exists.
    let old = change_thread_mask(libc::SIG_SETMASK, &helper_mask());
    let spawned = builder.spawn(f);
    change_thread_mask(libc::SIG_SETMASK, &old);
    spawned
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_mask_is_put_back_and_named() {
        let noted = ServerSignals::note();
        let mut set = no_signals();
        // SAFETY: adds a signal number to a valid set.
        unsafe { libc::sigaddset(&mut set, libc::SIGURG) };
        change_thread_mask(libc::SIG_BLOCK, &set);
        assert_eq!(noted.restore_mask(), vec!["SIGURG"]);
        let now = thread_mask();
        // SAFETY: reads a valid set.
        let blocked = unsafe { libc::sigismember(&now, libc::SIGURG) };
        assert_eq!(blocked, 0, "unblocked again");
        assert!(noted.restore_mask().is_empty(), "nothing changed since");
    }

    #[test]
    fn a_changed_handler_is_put_back_and_named() {
        // SIGURG: ignored by default, so a test process may change it without harm.
        let before = current(libc::SIGURG).unwrap();
        let noted = ServerSignals::note();
        // SAFETY: SIG_IGN for SIGURG changes nothing this test process relies on.
        unsafe { libc::signal(libc::SIGURG, libc::SIG_IGN) };
        assert_eq!(noted.restore(&[]), vec!["SIGURG"]);
        let after = current(libc::SIGURG).unwrap();
        assert_eq!(after.sa_sigaction, before.sa_sigaction);
        assert!(noted.restore(&[]).is_empty(), "nothing changed since");
    }
}
