//! A worker whose own descriptors an app closed (`os.closerange` run in the server's process, a
//! daemonising helper called without its fork, a double close) cannot go on: with its epoll
//! closed, nginx's `epoll_wait` fails at once, for ever, and the worker spins at full CPU without
//! a log line (its log is closed too) while its share of the connections waits for nothing. Once
//! a second the worker checks that what its event loop stands on is still open; when something
//! is not, it says so and makes way for a new worker, which nginx's master starts.

use std::os::fd::RawFd;
use std::sync::OnceLock;

use nginx_sys::{
    ngx_cycle_t, ngx_event_t, ngx_exiting, ngx_listening_t, ngx_msec_t, ngx_quit, ngx_terminate,
};

use crate::ffi::guard;
use crate::ffi::timer::WorkerTimer;

/// How often the descriptors are looked at.
const EVERY_MS: ngx_msec_t = 1000;

/// What the worker stands on, found when it starts. A number is not enough to know a
/// descriptor by: once an app closed them, the next files it opens take the lowest numbers,
/// nginx's among them.
struct Watched {
    /// nginx's epoll and the module's notifier eventfd, registered in it: while both are the
    /// same, registering the eventfd again fails with EEXIST; a closed or replaced one of the
    /// two does not.
    epoll: RawFd,
    notifier: RawFd,
    /// Each listening socket with its inode (every socket has its own).
    listening: Vec<(RawFd, libc::ino_t)>,
    /// The error log's file, where the last words go while it is still there.
    log: Option<(RawFd, libc::ino_t)>,
}

static WATCHED: OnceLock<Watched> = OnceLock::new();
static TIMER: WorkerTimer = WorkerTimer::new();

/// Starts watching nginx's epoll, the module's notifier (`notifier`, registered in it) and the
/// worker's listening sockets.
///
/// # Safety
/// Event-loop thread, in `init_process` after nginx's event module set up the worker's
/// listening sockets and the notifier was registered, before Python starts.
pub(crate) unsafe fn start(cycle: *mut ngx_cycle_t, notifier: RawFd) {
    let Some(epoll) = epoll_descriptors().find(|&ep| registered(ep, notifier)) else {
        return;
    };
    let mut listening = Vec::new();
    // SAFETY: per the function contract; the cycle's listening array holds `nelts` entries,
    // fixed while the worker runs.
    unsafe {
        let all = (*cycle).listening.elts as *const ngx_listening_t;
        if !all.is_null() {
            for i in 0..(*cycle).listening.nelts {
                let fd = (*all.add(i)).fd;
                if let Some(inode) = inode(fd) {
                    listening.push((fd, inode));
                }
            }
        }
    }
    let log = crate::ffi::log::cycle_log_fd().and_then(|fd| Some((fd, inode(fd)?)));
    let watched = Watched {
        epoll,
        notifier,
        listening,
        log,
    };
    if WATCHED.set(watched).is_ok() {
        // SAFETY: per the function contract; the event is a static.
        unsafe { arm() };
    }
}

/// The epoll descriptors open in this process.
fn epoll_descriptors() -> impl Iterator<Item = RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            (target.as_os_str() == "anon_inode:[eventpoll]")
                .then(|| entry.file_name().to_str()?.parse().ok())?
        })
}

/// Whether `fd` is registered in the epoll `epoll`, by registering it: a registration that
/// succeeds (a new epoll or eventfd under the old numbers) is taken back at once.
fn registered(epoll: RawFd, fd: RawFd) -> bool {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: epoll_ctl reads the event; on numbers that are not an epoll and a pollable file
    // it fails without effect.
    let rc = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc == 0 {
        // SAFETY: takes back the registration just made, in an epoll that is not nginx's.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, &mut event) };
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST)
}

/// The inode of the file open as `fd` (None: not open).
fn inode(fd: RawFd) -> Option<libc::ino_t> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes into the zeroed struct, which it fills when it succeeds.
    (unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0)
        // SAFETY: filled by the successful call.
        .then(|| unsafe { st.assume_init() }.st_ino)
}

/// # Safety
/// Event-loop thread.
unsafe fn arm() {
    // SAFETY: per the function contract; cancelable, the timer does not hold an exiting worker.
    unsafe {
        crate::ffi::timer::keep_armed(TIMER.event(), Some(check), std::ptr::null_mut(), EVERY_MS)
    };
}

unsafe extern "C" fn check(_ev: *mut ngx_event_t) {
    guard("the descriptor watch", (), || {
        // SAFETY: nginx's own flags, read on the event loop.
        let exiting = unsafe { ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 };
        if exiting || crate::exit_drain::ending() {
            // An exiting worker (or one that drains before its exit) closes its listening
            // sockets itself; the watch ends.
            return;
        }
        let Some(w) = WATCHED.get() else {
            return;
        };
        let lost_loop = !registered(w.epoll, w.notifier);
        let lost_listening = w
            .listening
            .iter()
            .find(|&&(fd, ino)| inode(fd) != Some(ino));
        let what = match (lost_loop, lost_listening) {
            (true, _) => format!(
                "nginx's epoll (descriptor {}) or the module's notifier eventfd ({})",
                w.epoll, w.notifier
            ),
            (false, Some((fd, _))) => format!("a listening socket (descriptor {fd})"),
            (false, None) => {
                // SAFETY: the timer's handler runs on the event loop.
                unsafe { arm() };
                return;
            }
        };
        let log_intact = w.log.is_some_and(|(fd, ino)| inode(fd) == Some(ino));
        crate::ffi::log::alert_even_without_log(
            &format!(
                "wsgi: {what} was closed under the worker, by the app (os.closerange or a \
                 double close?); the worker exits and nginx starts another"
            ),
            log_intact,
        );
        if lost_loop {
            // Nothing in flight can end without the event loop; the exit of Python and nginx
            // needs it too.
            // SAFETY: ends the process at once; its connections are lost with the loop anyway.
            unsafe { libc::_exit(1) };
        }
        crate::sibling_workers::withdraw();
        // SAFETY: nginx's own flag, set on the event loop: the worker stops accepting, ends what
        // it has in flight and exits (as on SIGQUIT).
        unsafe { ngx_quit = 1 };
    })
}
