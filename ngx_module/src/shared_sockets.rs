//! The stream (TCP, Unix-domain) listening sockets a worker shares with the others, taken out of its event set and put
//! back, as nginx's accept mutex does for a worker without it: their new connections go to the
//! other workers meanwhile. Not a worker's own `reuseport` socket, whose connections would wait
//! for it, nor any under the accept mutex, which nginx puts back when the worker takes it. The
//! sockets stay open. Event-loop thread only.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use nginx_sys::{ngx_event_t, ngx_listening_t, NGX_OK};

use crate::ffi::event_flags::{EXCLUSIVE_EVENT, READ_EVENT};

/// Why the worker left its shared sockets to the others.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Why {
    /// It is busy in Python and another is not (`busy_handoff.rs`): until it is not.
    Busy = 1,
    /// It drains before its exit (`exit_drain.rs`): for good.
    Exit = 2,
    /// A reload's new worker that could not load its apps, while the old ones, which serve them,
    /// accept or still run (`unloaded_aside.rs`): until they stop, exit, or a bound passes.
    Unloaded = 3,
}

/// 0 while the worker takes its share of new connections, else the [`Why`] it left them.
static LEFT: AtomicU8 = AtomicU8::new(0);

/// Why the worker has left its shared sockets to the others, if it has.
pub(crate) fn left() -> Option<Why> {
    match LEFT.load(Relaxed) {
        1 => Some(Why::Busy),
        2 => Some(Why::Exit),
        3 => Some(Why::Unloaded),
        _ => None,
    }
}

/// Takes the shared sockets out of the event set; whether the worker has any to leave. An exit
/// overrides another reason (nothing puts them back then); another reason does not replace the
/// first one's.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn leave(why: Why) -> bool {
    // SAFETY: nginx's own flag, read on the event loop.
    if unsafe { nginx_sys::ngx_use_accept_mutex != 0 } {
        return false;
    }
    // SAFETY: per the function contract.
    let any = unsafe { take_out(why == Why::Busy) };
    if any && (left().is_none() || why == Why::Exit) {
        LEFT.store(why as u8, Relaxed);
    }
    any
}

/// Takes the shared sockets out again once nginx put them back: its back-off after running out
/// of descriptors puts every listening socket back in the event set when its timer fires (the
/// timer stays: the worker's own `reuseport` sockets are out meanwhile too).
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn keep_out() {
    if let Some(why) = left() {
        // SAFETY: per the function contract.
        unsafe { take_out(why == Why::Busy) };
    }
}

/// Whether `rev` is one of the shared sockets' read events the worker keeps out of its event
/// set now.
///
/// # Safety
/// Event-loop thread; `rev` is a live listening connection's read event.
pub(crate) unsafe fn kept_out(rev: *mut ngx_event_t) -> bool {
    let Some(why) = left() else {
        return false;
    };
    // SAFETY: per the function contract.
    unsafe { shared_read_events().contains(&rev) && (why != Why::Busy || is_tcp(rev)) }
}

/// A worker that left its shared sockets for `why` takes its share of new connections again:
/// they go back in the event set, exclusively when nginx watches them so
/// (`ngx_event_process_init`). Not while nginx holds every listening socket back after running
/// out of descriptors: its timer puts them back. Nothing when it left them for another reason
/// (for its exit, for good).
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn put_back(why: Why) {
    if left() != Some(why) || why == Why::Exit {
        return;
    }
    LEFT.store(0, Relaxed);
    // SAFETY: per the function contract; the cycle's listening array has `nelts` entries, each
    // with the worker's connection of it or none (closed ones have none); nginx's event actions
    // are set in a worker.
    unsafe {
        let Some(add) = nginx_sys::ngx_event_actions.add else {
            return;
        };
        if backing_off() {
            return;
        }
        let flags = accept_flags();
        for rev in shared_read_events() {
            if (*rev).active() == 0 {
                add(rev, READ_EVENT as _, flags as _);
            }
        }
    }
}

/// The flags of a shared listening socket's read event in the event set: exclusive where
/// nginx adds them so (`ngx_event_process_init`: epoll, several workers, no accept mutex).
#[cfg(ngx_use_exclusive_accept)]
pub(crate) fn accept_flags() -> u32 {
    // SAFETY: nginx's own flag, set before the worker's event loop runs.
    if unsafe { nginx_sys::ngx_use_exclusive_accept != 0 } {
        EXCLUSIVE_EVENT
    } else {
        0
    }
}

/// The flags of a shared listening socket's read event in the event set: exclusive where
/// nginx adds them so. nginx before 1.21.6 (Ubuntu 22.04's 1.18) records no flag of it:
/// `ngx_event_process_init` adds a listening socket that is not `reuseport` with
/// `NGX_EXCLUSIVE_EVENT` when there is no accept mutex, the event module is epoll and there are
/// several workers (and EPOLLEXCLUSIVE is defined, as on every Linux build this module makes),
/// the very conditions under which 1.21.6 sets `ngx_use_exclusive_accept`.
#[cfg(not(ngx_use_exclusive_accept))]
pub(crate) fn accept_flags() -> u32 {
    use ngx::core::{CoreModuleMainConf, NgxCoreModule};
    // SAFETY: nginx's own settings, set before the worker's event loop runs; the cycle is live.
    let exclusive = unsafe {
        nginx_sys::ngx_use_accept_mutex == 0
            && nginx_sys::ngx_event_flags & nginx_sys::NGX_USE_EPOLL_EVENT as usize != 0
            && NgxCoreModule::main_conf(&*nginx_sys::ngx_cycle)
                .is_some_and(|ccf| ccf.worker_processes > 1)
    };
    if exclusive {
        EXCLUSIVE_EVENT
    } else {
        0
    }
}

/// Whether nginx holds the worker's listening sockets back after running out of descriptors
/// (its timer, on one of their read events, puts them all back).
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn backing_off() -> bool {
    // SAFETY: per the function contract; the cycle's listening array has `nelts` entries, each
    // with the worker's connection of it or none.
    unsafe {
        let cycle = nginx_sys::ngx_cycle;
        std::slice::from_raw_parts(
            (*cycle).listening.elts as *const ngx_listening_t,
            (*cycle).listening.nelts,
        )
        .iter()
        .map(|ls| ls.connection)
        .any(|c| !c.is_null() && !(*c).read.is_null() && (*(*c).read).timer_set() != 0)
    }
}

/// Linux's `TCP_LISTEN` state (`include/net/tcp_states.h`), which libc does not name.
const TCP_LISTEN: u8 = 10;

/// How many connections wait in the shared sockets' accept queues (the kernel's count, for a
/// listening TCP socket, of connections made and not yet accepted); Unix-domain ones are not
/// counted.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn waiting_connections() -> u32 {
    // SAFETY: per the function contract.
    let events = unsafe { shared_read_events() };
    events
        .into_iter()
        .filter_map(|rev| {
            // SAFETY: a live listening connection's read event; its `data` is the connection.
            let fd = unsafe { (*((*rev).data as *const nginx_sys::ngx_connection_t)).fd };
            // SAFETY: an all-zero tcp_info is a valid value of the plain struct.
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `info`, ours.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&mut info as *mut libc::tcp_info).cast(),
                    &mut len,
                )
            };
            // For a listening socket the kernel puts its accept queue's length there.
            (rc == 0 && info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
        })
        .sum()
}

/// Whether `rev` is a TCP listening socket's: a busy worker leaves only those, whose accept
/// queues it can see (a Unix-domain socket's it cannot, and a connection waiting there for a
/// worker that does not take it would wait unseen).
///
/// # Safety
/// Event-loop thread; `rev` is a live listening connection's read event.
unsafe fn is_tcp(rev: *mut nginx_sys::ngx_event_t) -> bool {
    // SAFETY: per the function contract; a listening connection's `listening` is its socket's.
    unsafe {
        let c = (*rev).data as *const nginx_sys::ngx_connection_t;
        let ls = (*c).listening;
        !ls.is_null()
            && !(*ls).sockaddr.is_null()
            && matches!(
                i32::from((*(*ls).sockaddr).sa_family),
                libc::AF_INET | libc::AF_INET6
            )
    }
}

/// Whether the worker has any shared TCP listening socket open.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn any() -> bool {
    // SAFETY: per the function contract; the events are live listening connections'.
    unsafe { shared_read_events().into_iter().any(|rev| is_tcp(rev)) }
}

/// The read events of the worker's open shared stream listening sockets (TCP and Unix-domain).
///
/// # Safety
/// Event-loop thread.
unsafe fn shared_read_events() -> Vec<*mut ngx_event_t> {
    // SAFETY: per the function contract; the cycle's listening array has `nelts` entries, each
    // with the worker's connection of it or none.
    unsafe {
        let cycle = nginx_sys::ngx_cycle;
        let listening = std::slice::from_raw_parts(
            (*cycle).listening.elts as *const ngx_listening_t,
            (*cycle).listening.nelts,
        );
        listening
            .iter()
            // nginx's exit closes them (-1), freeing their connections for other uses.
            .filter(|ls| ls.fd != -1 && ls.reuseport() == 0 && ls.type_ == libc::SOCK_STREAM)
            .map(|ls| ls.connection)
            .filter(|&c| !c.is_null() && (*c).fd != -1 && !(*c).read.is_null())
            .map(|c| (*c).read)
            .collect()
    }
}

/// The shared sockets' read events leave the event set (those in it, only the TCP ones when
/// `tcp_only`); whether the worker has any.
///
/// # Safety
/// Event-loop thread.
unsafe fn take_out(tcp_only: bool) -> bool {
    // SAFETY: per the function contract; nginx's event actions are set in a worker, and each
    // event is a live listening connection's.
    unsafe {
        let Some(del) = nginx_sys::ngx_event_actions.del else {
            return false;
        };
        let mut any = false;
        for rev in shared_read_events() {
            if tcp_only && !is_tcp(rev) {
                continue;
            }
            if (*rev).posted() != 0 {
                nginx_sys::ngx_delete_posted_event(rev);
            }
            if (*rev).active() != 0
                && del(rev, READ_EVENT as _, nginx_sys::NGX_DISABLE_EVENT as _)
                    != NGX_OK as nginx_sys::ngx_int_t
            {
                continue;
            }
            any = true;
        }
        any
    }
}
