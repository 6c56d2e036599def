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

/// What a watched descriptor is to the worker.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// nginx's epoll, or the module's own notifier: without it nothing in flight can end.
    EventLoop(&'static str),
    /// A listening socket: the worker accepts no more there, but what it has in flight can end.
    Listening,
}

/// The descriptors watched, found once when the worker starts.
static WATCHED: OnceLock<Vec<(RawFd, Role)>> = OnceLock::new();
static TIMER: WorkerTimer = WorkerTimer::new();

/// Starts watching nginx's epoll, the module's notifier (`notifier`) and the worker's listening
/// sockets.
///
/// # Safety
/// Event-loop thread, in `init_process` after nginx's event module set up the worker's
/// listening sockets, and before Python starts (the one epoll open then is nginx's).
pub(crate) unsafe fn start(cycle: *mut ngx_cycle_t, notifier: RawFd) {
    let mut watched: Vec<(RawFd, Role)> = epoll_descriptors()
        .map(|fd| (fd, Role::EventLoop("nginx's epoll")))
        .collect();
    watched.push((notifier, Role::EventLoop("the module's notifier eventfd")));
    // SAFETY: per the function contract; the cycle's listening array holds `nelts` entries,
    // fixed while the worker runs (a reuseport socket of another worker's has fd -1 here).
    unsafe {
        let listening = (*cycle).listening.elts as *const ngx_listening_t;
        if !listening.is_null() {
            for i in 0..(*cycle).listening.nelts {
                let fd = (*listening.add(i)).fd;
                if fd >= 0 {
                    watched.push((fd, Role::Listening));
                }
            }
        }
    }
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

/// # Safety
/// Event-loop thread.
unsafe fn arm() {
    // SAFETY: per the function contract; cancelable, the timer does not hold an exiting worker.
    unsafe {
        crate::ffi::timer::keep_armed(TIMER.event(), Some(check), std::ptr::null_mut(), EVERY_MS)
    };
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

unsafe extern "C" fn check(_ev: *mut ngx_event_t) {
    guard("the descriptor watch", (), || {
        // SAFETY: nginx's own flags, read on the event loop.
        if unsafe { ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 } {
            // An exiting worker closes its listening sockets itself; the watch ends.
            return;
        }
        let watched = WATCHED.get().map(Vec::as_slice).unwrap_or_default();
        let closed: Vec<(RawFd, Role)> = watched
            .iter()
            .copied()
            .filter(|&(fd, _)| !is_open(fd))
            .collect();
        let Some(&(fd, role)) = closed.first() else {
            // SAFETY: the timer's handler runs on the event loop.
            unsafe { arm() };
            return;
        };
        let what = match role {
            Role::EventLoop(what) => what,
            Role::Listening => "a listening socket",
        };
        crate::ffi::log::alert_even_without_log(&format!(
            "wsgi: descriptor {fd} ({what}) was closed under the worker, by the app (os.closerange \
             or a double close?): {} of its descriptors are gone; the worker exits and nginx \
             starts another",
            closed.len()
        ));
        if closed.iter().any(|(_, role)| *role != Role::Listening) {
            // Nothing in flight can end without the event loop; the exit of Python and nginx
            // needs it too.
            // SAFETY: ends the process at once; its connections are lost with the loop anyway.
            unsafe { libc::_exit(1) };
        }
        // SAFETY: nginx's own flag, set on the event loop: the worker stops accepting, ends what
        // it has in flight and exits (as on SIGQUIT).
        unsafe { ngx_quit = 1 };
    })
}
