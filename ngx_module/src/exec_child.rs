//! nginx's descriptors are not for the programs an app runs: they are closed on `exec`. nginx
//! opens its sockets, its epoll and its channel without close-on-exec (a worker never runs a
//! program), and the fork handler of [`crate::fork_child`] does not run where a program starts
//! without `fork` (`os.system`, `os.posix_spawn`, a C library's `system()` or `popen()`). Such a
//! program kept the listening sockets (a restarted nginx could not bind them) and its client's
//! connection (the client waited for the program to end). A connection is marked as nginx
//! accepts it, and the app's program starts and the worker's accepts take turns (the core's
//! `spawn_gate`): none starts between an accept and its marking. A request body's temp file is
//! marked as nginx writes to it, by a request body filter: a program started while another
//! client's upload is spooled does not keep that file (nor its disk space). What nginx opens
//! later for itself otherwise (upstream connections, a proxied response's temp file, logs
//! reopened) is not marked. The channels to the workers that start after this one, which the
//! master passes it then, are marked as they come.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use nginx_sys::{
    ngx_chain_t, ngx_connection_handler_pt, ngx_connection_t, ngx_cycle_t, ngx_event_handler_pt,
    ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_listening_t, NGX_ERROR, NGX_OK,
};
use ngx::core::{CoreModuleMainConf, NgxCoreModule};

use crate::ffi::event_flags::READ_EVENT;

/// What runs after each of nginx's accepts (the busy hand-off's look at the worker's room).
static AFTER_ACCEPT: OnceLock<unsafe fn()> = OnceLock::new();

/// Sets what runs after each of nginx's accepts, on the event loop; once per worker.
pub(crate) fn after_each_accept(f: unsafe fn()) {
    let _ = AFTER_ACCEPT.set(f);
}

/// Each listening socket's own handler of new connections, which the wrapper calls.
static HANDLERS: OnceLock<Vec<(usize, ngx_connection_handler_pt)>> = OnceLock::new();

/// nginx's accept handler of each listening socket's event, which [`accept_in_turn`] calls.
static ACCEPTS: OnceLock<Vec<(usize, ngx_event_handler_pt)>> = OnceLock::new();

/// Marks every descriptor the worker has open close-on-exec, and wraps the listening sockets'
/// handlers so that each connection nginx accepts from now on is marked too. Once per worker,
/// before Python starts (no descriptor of an app's is open yet).
///
/// # Safety
/// Event-loop thread, in `init_process`; `cycle` is live.
pub(crate) unsafe fn close_nginx_descriptors_on_exec(cycle: *mut ngx_cycle_t) {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<libc::c_int> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        // The listing's own descriptor, closed by now, fails harmlessly.
        fds.into_iter().for_each(close_on_exec);
    }
    // SAFETY: per the function contract; the cycle's listening array holds `nelts` entries,
    // fixed while the worker runs.
    unsafe {
        let listening = (*cycle).listening.elts as *mut ngx_listening_t;
        if listening.is_null() {
            return;
        }
        let mut handlers = Vec::new();
        let mut accepts = Vec::new();
        for i in 0..(*cycle).listening.nelts {
            let ls = listening.add(i);
            if (*ls).handler.is_some() {
                handlers.push((ls as usize, (*ls).handler));
                (*ls).handler = Some(accepted);
            }
            // The worker's own connection of the socket (none for another worker's
            // `reuseport` copy); a datagram socket (QUIC) accepts no descriptors.
            let c = (*ls).connection;
            if c.is_null() || (*ls).type_ != libc::SOCK_STREAM || (*(*c).read).handler.is_none() {
                continue;
            }
            accepts.push(((*c).read as usize, (*(*c).read).handler));
            (*(*c).read).handler = Some(accept_in_turn);
        }
        let _ = HANDLERS.set(handlers);
        let _ = ACCEPTS.set(accepts);
    }
    ngx_wsgi::spawn_gate::take_turns_with_forks();
}

/// A listening socket is readable: nginx accepts, unless a program of the app's is being
/// started (it would keep the connections accepted before they are marked, in `accepted`).
/// Then the socket, which nginx watches level-triggered, is accepted from at the next turn of
/// the event loop, once the program has started. Nothing here may wait for the GIL: a thread
/// waiting for its turn to start a program may hold it.
unsafe extern "C" fn accept_in_turn(ev: *mut ngx_event_t) {
    crate::ffi::guard("accepting connections", (), || {
        let Some(accept) = ACCEPTS
            .get()
            .and_then(|all| all.iter().find(|(at, _)| *at == ev as usize))
            .and_then(|(_, accept)| *accept)
        else {
            return;
        };
        if !ngx_wsgi::spawn_gate::begin_accepting() {
            // SAFETY: the listening socket's read event, on the event loop.
            unsafe {
                if (*ev).timedout() != 0 {
                    // nginx's timer to take the sockets back after running out of descriptors
                    // (they are out of the event set meanwhile): it comes again.
                    nginx_sys::ngx_add_timer(ev, 1);
                } else {
                    pause(ev);
                }
            }
            return;
        }
        /// Ends the turn however the accept returns.
        struct Turn;
        impl Drop for Turn {
            fn drop(&mut self) {
                ngx_wsgi::spawn_gate::end_accepting();
            }
        }
        let _turn = Turn;
        // SAFETY: the listening socket's read event, on the event loop.
        let backed_off = unsafe { (*ev).timedout() != 0 };
        // SAFETY: as above.
        if backed_off && unsafe { crate::shared_sockets::kept_out(ev) } {
            // nginx's back-off after running out of descriptors ends on a socket the worker
            // leaves to the others: its sockets go back as nginx's handler would put them (the
            // worker's own `reuseport` ones), the shared ones out again, and nothing is taken
            // from this one (an accept that failed again, a [crit] each time).
            // SAFETY: on the event loop, with nginx's cycle.
            unsafe {
                (*ev).set_timedout(0);
                nginx_sys::ngx_enable_accept_events(nginx_sys::ngx_cycle);
                crate::shared_sockets::keep_out();
            }
            return;
        }
        // SAFETY: nginx's own handler of this event, called as nginx would have called it.
        unsafe { accept(ev) };
        if let Some(after) = AFTER_ACCEPT.get() {
            // SAFETY: on the event loop, as the hook asks.
            unsafe { after() };
        }
        if backed_off {
            // nginx's back-off put every listening socket back in the event set: the shared ones
            // the worker left to the others (it drains, or it is busy) go out again.
            // SAFETY: on the event loop.
            unsafe { crate::shared_sockets::keep_out() };
        }
    })
}

/// How soon a paused listening socket is watched again.
const PAUSE_MS: nginx_sys::ngx_msec_t = 1;

/// The listening sockets' read events taken out of the event set while a program starts
/// (addresses; event loop only).
static PAUSED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
static RESUME: crate::ffi::timer::WorkerTimer = crate::ffi::timer::WorkerTimer::new();

/// A listening socket that stays readable while a program starts: nginx watches it
/// level-triggered, so the event loop would go round at full speed until the start ends (a few
/// ms for a `fork` of a large process, which the spinning core slows further). Out of the event
/// set, it is watched again a millisecond later. (Not with `timer_resolution`, under which
/// timers run only at its ticks: the socket would wait that long.)
///
/// # Safety
/// Event-loop thread; `ev` is a listening socket's read event.
unsafe fn pause(ev: *mut ngx_event_t) {
    // SAFETY: per the function contract; nginx's event module is set up in a worker, and its
    // cycle is live.
    unsafe {
        let ticks = NgxCoreModule::main_conf(&*nginx_sys::ngx_cycle)
            .is_some_and(|ccf| ccf.timer_resolution != 0);
        let Some(del) = nginx_sys::ngx_event_actions.del else {
            return;
        };
        if ticks {
            return;
        }
        if (*ev).active() == 0
            || del(ev, READ_EVENT as _, nginx_sys::NGX_DISABLE_EVENT as _) != NGX_OK as ngx_int_t
        {
            return;
        }
        PAUSED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ev as usize);
        crate::ffi::timer::keep_armed(RESUME.event(), Some(resume), std::ptr::null_mut(), PAUSE_MS);
    }
}

/// The paused listening sockets are watched again, as nginx's `ngx_event_process_init` watches
/// them: a worker's own `reuseport` socket always; a shared one exclusively when nginx does so, and
/// not while another worker holds the accept mutex (nginx puts it back when this one takes the
/// mutex), nor while the worker leaves it to the others (`shared_sockets.rs`). Not those closed since (the worker's
/// exit), and none while nginx holds them all back after running out of descriptors (its timer on
/// one of them puts them all back).
unsafe extern "C" fn resume(_ev: *mut ngx_event_t) {
    crate::ffi::guard("accepting connections again", (), || {
        let paused = std::mem::take(&mut *PAUSED.lock().unwrap_or_else(|e| e.into_inner()));
        // SAFETY: on the event loop; the cycle's listening array has `nelts` entries (none once
        // nginx closed them), and an event is added back only while it is still one of theirs.
        unsafe {
            let Some(add) = nginx_sys::ngx_event_actions.add else {
                return;
            };
            let cycle = nginx_sys::ngx_cycle;
            let listening = std::slice::from_raw_parts(
                (*cycle).listening.elts as *const ngx_listening_t,
                (*cycle).listening.nelts,
            );
            let read_event = |ls: &ngx_listening_t| {
                let c = ls.connection;
                (!c.is_null() && (*c).fd != -1).then(|| (*c).read)
            };
            if crate::shared_sockets::backing_off() {
                return;
            }
            let mutex_elsewhere =
                nginx_sys::ngx_use_accept_mutex != 0 && nginx_sys::ngx_accept_mutex_held == 0;
            for ev in paused {
                let Some(ls) = listening
                    .iter()
                    .find(|ls| read_event(ls).is_some_and(|rev| rev as usize == ev))
                else {
                    continue;
                };
                let ev = ev as *mut ngx_event_t;
                if (*ev).active() != 0 {
                    continue;
                }
                let flags = if ls.reuseport() != 0 {
                    0
                } else if mutex_elsewhere || crate::shared_sockets::kept_out(ev) {
                    continue;
                } else {
                    crate::shared_sockets::accept_flags()
                };
                add(ev, READ_EVENT as _, flags as _);
            }
        }
    })
}

/// Marks `fd` close-on-exec. One system call: it is a descriptor's only flag, so nothing needs
/// reading first.
pub(crate) fn close_on_exec(fd: libc::c_int) {
    // SAFETY: fcntl on a descriptor number changes only that descriptor's flags; one that is
    // not open fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Marks the channels to the other workers close-on-exec: the master passes the worker each
/// newer worker's channel as that one starts (after this worker's own start marked what it had
/// then), into that worker's slot of nginx's process table, past the table's count as this
/// worker knows it: every slot is looked at. A worker keeps the sending end (`channel[0]`) of
/// the others' channels, and only their receiving end of its own (marked at its start); the
/// other numbers in the table are stale, possibly reused by files of the app's.
///
/// # Safety
/// Event-loop thread, after nginx's channel handler ran.
pub(crate) unsafe fn close_channels_on_exec() {
    // SAFETY: per the function contract, nginx's process table is this thread's; a slot never
    // used is all zeros (its pid 0), and a channel nginx closed on the master's word is -1.
    unsafe {
        let own = nginx_sys::ngx_process_slot;
        let table = std::ptr::addr_of!(nginx_sys::ngx_processes).cast::<nginx_sys::ngx_process_t>();
        for i in 0..nginx_sys::NGX_MAX_PROCESSES as usize {
            let slot = &*table.add(i);
            if i as nginx_sys::ngx_int_t != own && slot.pid > 0 && slot.channel[0] > 2 {
                close_on_exec(slot.channel[0]);
            }
        }
    }
}

/// A connection nginx just accepted: marked, then handed to its listening socket's handler.
unsafe extern "C" fn accepted(c: *mut ngx_connection_t) {
    crate::ffi::guard("a new connection", (), || {
        // SAFETY: nginx passes the new connection, whose `listening` is one of the wrapped
        // ones; a connection with no handler to go to is closed, as nginx would an unusable one.
        unsafe {
            close_on_exec((*c).fd);
            let ls = (*c).listening as usize;
            let handler = HANDLERS
                .get()
                .and_then(|all| all.iter().find(|(at, _)| *at == ls))
                .and_then(|(_, handler)| *handler);
            match handler {
                Some(handler) => handler(c),
                None => nginx_sys::ngx_close_connection(c),
            }
        }
    })
}

/// The request body filter below this module's in nginx's chain (the one that writes the
/// temp file, at the bottom), as a function pointer.
static NEXT_BODY_FILTER: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

type BodyFilter = unsafe extern "C" fn(*mut ngx_http_request_t, *mut ngx_chain_t) -> ngx_int_t;

/// Puts [`body_filter`] on top of nginx's request body filters (each configuration's; the
/// workers inherit the chain).
///
/// # Safety
/// In `postconfiguration`, after nginx's core module has set up the chain.
pub(crate) unsafe fn mark_body_temp_files() {
    // SAFETY: per the function contract: configuration time, one thread.
    unsafe {
        let next = nginx_sys::ngx_http_top_request_body_filter;
        NEXT_BODY_FILTER.store(
            next.map_or(std::ptr::null_mut(), |f| f as *mut ()),
            Ordering::Release,
        );
        nginx_sys::ngx_http_top_request_body_filter = Some(body_filter);
    }
}

/// Passes the body on, then marks its temp file if the filters below opened it in this call
/// (without close-on-exec, once the body outgrows `client_body_buffer_size`): one `fcntl` per
/// request whose body goes to a file.
unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    crate::ffi::guard("the request body filter", NGX_ERROR as ngx_int_t, || {
        let next = NEXT_BODY_FILTER.load(Ordering::Acquire);
        if next.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        // SAFETY: `next` was stored from a `BodyFilter` (a function pointer round-trips
        // through `*mut ()`); nginx passes the live request and its body chain on the event
        // loop, and `request_body`, when set, and its temp file stay valid for the request.
        unsafe {
            let temp_fd = || {
                let rb = (*r).request_body;
                match rb.is_null() || (*rb).temp_file.is_null() {
                    true => -1,
                    false => (*(*rb).temp_file).file.fd,
                }
            };
            let before = temp_fd();
            let next = std::mem::transmute::<*mut (), BodyFilter>(next);
            let rc = next(r, chain);
            let after = temp_fd();
            if after >= 0 && after != before {
                close_on_exec(after);
            }
            rc
        }
    })
}
