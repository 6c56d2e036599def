//! A worker's exit that loses no keep-alive request. nginx's own exit closes idle keep-alive
//! connections at once, and a request a client sent on one in that instant is lost (a reload
//! under keep-alive load lost about one per busy connection). So before it exits (recycling, or
//! the quit of a reload), a worker drains: it serves on, every response closes its connection
//! (a header filter, for every location: the module's and nginx's own), until no connection
//! waits idle and none has a response under way whose head promised keep-alive, or for
//! [`DRAIN_MS`] at most; then it quits as nginx's quit does. (The header filter is
//! `header_filter.rs`.) When others take its new connections, it tells its long-lived
//! connections' clients (WebSockets, event streams) to go as the drain begins, as HTTP/2's
//! GOAWAY does; their reconnects must not reach it on an idle keep-alive connection (a
//! browser's, which it would still serve: an Engine.IO session opened there dies with the
//! worker), so its idle ones close first, after [`HANDOFF_MS`] for what is on its way on them.
//! Event-loop thread only.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use nginx_sys::{
    ngx_connection_t, ngx_current_msec, ngx_cycle, ngx_event_t, ngx_exiting, ngx_http_request_t,
    ngx_listening_t, ngx_msec_t, ngx_quit, NGX_HTTP_MODULE, NGX_HTTP_SWITCHING_PROTOCOLS,
    NGX_HTTP_VERSION_11,
};

use crate::ffi::guard;
use crate::ffi::timer::WorkerTimer;

/// The longest a worker drains before it exits: a busy connection's next response closes it
/// within it; one idle for longer meets the race any keep-alive timeout has, which clients
/// retry.
pub(crate) const DRAIN_MS: ngx_msec_t = 2000;
/// How often the drain looks for idle connections left.
const DRAIN_CHECK_MS: ngx_msec_t = 25;
/// How long a drain with long-lived connections to send elsewhere serves what reaches its idle
/// keep-alive connections (a request on its way as the drain began) before it closes those
/// left and tells the long-lived ones' clients to go: a round trip, about, far from the second
/// a Socket.IO client waits before it reconnects.
pub(crate) const HANDOFF_MS: ngx_msec_t = 250;

static DRAINING: AtomicBool = AtomicBool::new(false);
/// Run when the drain sends the worker's clients elsewhere: what tells a long-lived
/// connection's client to come back on a new one (a WebSocket's close frame), as the GOAWAY
/// tells an HTTP/2 client, instead of at nginx's exit, after the drain.
static SENDING_CLIENTS_ELSEWHERE: std::sync::Mutex<Vec<LongLived>> =
    std::sync::Mutex::new(Vec::new());
static DRAIN_STARTED: AtomicUsize = AtomicUsize::new(0);
/// When the hand-off of the long-lived connections began waiting for the idle ones to close
/// (0: none waits).
static HANDOFF_WAITS_SINCE: AtomicUsize = AtomicUsize::new(0);
static DRAIN_TIMER: WorkerTimer = WorkerTimer::new();

/// Whether the drain goes on accepting connections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepting {
    /// The worker is recycled, and no other worker accepts: nothing replaces it before it exits.
    GoOn,
    /// The worker is recycled, and other workers of its configuration accept: they take the new
    /// connections of the sockets it shares with them (`shared_sockets.rs`).
    LeaveToOthers,
    /// A reload's newer workers accept: the worker closes its listening sockets at once, as
    /// nginx's quit would have.
    Stop,
}

/// Begins the drain, then the exit. A drain under way already goes on (a reload's quit during
/// a recycling's drain stops its accepting).
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn begin(accepting: Accepting) {
    let under_way = DRAINING.swap(true, Relaxed);
    // SAFETY: per the function contract: nginx's clock and cycle, read on the event loop.
    unsafe {
        match accepting {
            Accepting::Stop => {
                stop_accepting();
                send_clients_elsewhere();
            }
            Accepting::LeaveToOthers
                if crate::shared_sockets::leave(crate::shared_sockets::Why::Exit) =>
            {
                send_clients_elsewhere()
            }
            // The one that accepts: its shared sockets, left while it was busy, come back (not
            // those a reload's new worker that could not load its apps left while the old
            // workers accepted or ran: they stay out through its exit, `unloaded_aside.rs`).
            Accepting::GoOn => crate::shared_sockets::put_back(crate::shared_sockets::Why::Busy),
            Accepting::LeaveToOthers => {}
        }
        if under_way {
            return;
        }
        DRAIN_STARTED.store(ngx_current_msec, Relaxed);
        if !keep_alive_connections() {
            quit();
            return;
        }
        // Cancelable: it does not hold an exit that nginx begins meanwhile.
        crate::ffi::timer::keep_armed(
            DRAIN_TIMER.event(),
            Some(drain_check),
            std::ptr::null_mut(),
            DRAIN_CHECK_MS,
        );
    }
}

/// Closes the worker's listening sockets, as nginx's quit does (which calls it again, and finds
/// nothing left to close), first taking their read events out of the timers and the posted
/// events: a closed socket's connection is free for the next client, and a timer left on its
/// event (nginx's, to take the sockets back after running out of descriptors, or the turn
/// `exec_child` waits for) would fire on that client's.
///
/// # Safety
/// Event-loop thread.
unsafe fn stop_accepting() {
    crate::sibling_workers::withdraw();
    // SAFETY: per the function contract; the cycle's listening array has `nelts` entries, each
    // with the worker's connection of it or none.
    unsafe {
        let cycle = ngx_cycle;
        let listening = (*cycle).listening.elts as *mut ngx_listening_t;
        for i in 0..(*cycle).listening.nelts {
            let c = (*listening.add(i)).connection;
            if c.is_null() || (*c).read.is_null() {
                continue;
            }
            let rev = (*c).read;
            if (*rev).timer_set() != 0 {
                nginx_sys::ngx_del_timer(rev);
            }
            if (*rev).posted() != 0 {
                nginx_sys::ngx_delete_posted_event(rev);
            }
        }
        nginx_sys::ngx_close_listening_sockets(cycle);
    }
}

/// A kind of long-lived connection whose clients the drain tells to go.
#[derive(Clone, Copy)]
pub(crate) struct LongLived {
    /// Tells every such client to come back on a new connection.
    pub(crate) tell: fn(),
    /// How many such clients there are now.
    pub(crate) count: fn() -> usize,
}

/// Adds what [`send_clients_elsewhere`] tells (once, however often it is added).
pub(crate) fn when_sending_clients_elsewhere(kind: LongLived) {
    let mut all = SENDING_CLIENTS_ELSEWHERE
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|k| std::ptr::fn_addr_eq(k.tell, kind.tell)) {
        all.push(kind);
    }
}

/// The kinds added, the lock released.
fn long_lived_kinds() -> Vec<LongLived> {
    SENDING_CLIENTS_ELSEWHERE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// The worker no longer takes new connections, others do: the clients of its long-lived
/// connections are told to open new ones, which reach those others (while the drain serves the
/// next request of each HTTP/1 keep-alive connection, which has no such signal). HTTP/2 clients
/// are told at once (a GOAWAY names the last stream this worker serves, so a client knows which
/// requests to send again, and the streams it opens next reach the newer workers and their
/// configuration now, not after the drain; a QUIC connection told so before nginx's exit began
/// would close at once, with its requests in flight, so HTTP/3 waits for the exit). The others
/// are told once no idle HTTP/1 connection is left to take their reconnects, [`HANDOFF_MS`] at
/// most.
///
/// # Safety
/// Event-loop thread.
unsafe fn send_clients_elsewhere() {
    // SAFETY: per the function contract.
    unsafe {
        close_idle(Client::Http2);
        let long_lived = long_lived_kinds()
            .iter()
            .map(|k| (k.count)())
            .sum::<usize>()
            + crate::event_streams::due_to_end();
        if long_lived > 0 && any_client(Client::IdleHttp1) {
            crate::ffi::log::cycle_log(
                nginx_sys::NGX_LOG_NOTICE as usize,
                &format!(
                    "wsgi: {long_lived} long-lived connection(s) (WebSockets, event streams) \
                     to send to other workers: this worker closes its idle keep-alive \
                     connections (in {HANDOFF_MS} ms at most), then tells the long-lived ones' \
                     clients to go, so that their reconnects do not reach it"
                ),
            );
            HANDOFF_WAITS_SINCE.store(ngx_current_msec.max(1), Relaxed);
            return;
        }
    }
    hand_off();
}

/// Tells the clients of the long-lived connections to go: with no grace, event streams end now
/// and their clients reconnect to the new workers, not 2 s later at nginx's exit; WebSockets
/// get their close frames (the kinds added).
fn hand_off() {
    HANDOFF_WAITS_SINCE.store(0, Relaxed);
    crate::event_streams::end_all_for_exit();
    for kind in long_lived_kinds() {
        (kind.tell)();
    }
}

/// The hand-off that waits for the idle HTTP/1 connections: done once none is left, or at
/// [`HANDOFF_MS`], closing those left but any whose next request is already in (it is served,
/// and its answer closes it); one sent in that instant meets the race any keep-alive timeout
/// has, which clients retry.
///
/// # Safety
/// Event-loop thread.
unsafe fn hand_off_when_idle_ones_are_gone(now: ngx_msec_t) {
    let since = HANDOFF_WAITS_SINCE.load(Relaxed);
    if since == 0 {
        return;
    }
    // SAFETY: per the function contract.
    unsafe {
        if now.saturating_sub(since) >= HANDOFF_MS {
            close_idle(Client::IdleHttp1);
        } else if any_client(Client::IdleHttp1) {
            return;
        }
    }
    hand_off();
}

/// Closes each idle connection of `kind`: an HTTP/2 one sends its GOAWAY and closes once its
/// streams end, an HTTP/1 one closes, as nginx's exit would once the drain ends.
///
/// # Safety
/// Event-loop thread.
unsafe fn close_idle(kind: Client) {
    // SAFETY: per the function contract; the cycle's connection array has `connection_n`
    // entries for the process's life. Marking an idle connection closing and calling its read
    // handler is nginx's own ngx_close_idle_connections, which every idle connection's handler
    // is written for; one that closes frees its entry, which the loop then skips (no reference
    // to an entry outlives the handler's call).
    unsafe {
        let cycle = ngx_cycle;
        let connections = (*cycle).connections;
        for i in 0..(*cycle).connection_n {
            let c = connections.add(i);
            if client(&*c) != Some(kind) {
                continue;
            }
            // A request already in its socket is served (its answer closes the connection):
            // nginx's keep-alive handler would close without reading it.
            if kind == Client::IdleHttp1 && has_unread_bytes(&*c) {
                continue;
            }
            let rev = (*c).read;
            let Some(handler) = (*rev).handler else {
                continue;
            };
            (*c).set_close(1);
            handler(rev);
        }
    }
}

/// Whether a response now closes its connection: the worker drains or exits. (Once nginx's
/// exit began, its header filter says so itself.)
pub(crate) fn ending() -> bool {
    // SAFETY: nginx's own flag, read on the event loop.
    DRAINING.load(Relaxed) || unsafe { ngx_quit != 0 }
}

/// Has the worker's cycle begin nginx's graceful exit after this event, as on SIGQUIT.
pub(crate) fn quit() {
    crate::sibling_workers::withdraw();
    // SAFETY: nginx's own flag, set on the event loop; the worker's cycle reads it after the
    // event being handled.
    unsafe { ngx_quit = 1 };
}

/// The drain's timer: the worker quits once no keep-alive connection is left, or at the bound.
unsafe extern "C" fn drain_check(ev: *mut ngx_event_t) {
    guard("draining an exiting worker", (), || {
        // SAFETY: nginx's flags and clock, read on the event loop.
        let (exiting, now) = unsafe { (ngx_exiting != 0 || ngx_quit != 0, ngx_current_msec) };
        if exiting {
            return;
        }
        // SAFETY: on the event loop.
        unsafe { hand_off_when_idle_ones_are_gone(now) };
        let waited = now.saturating_sub(DRAIN_STARTED.load(Relaxed));
        // SAFETY: on the event loop.
        if waited >= DRAIN_MS || !unsafe { keep_alive_connections() } {
            quit();
        } else {
            // SAFETY: the event is the static drain timer, on the event loop.
            unsafe { nginx_sys::ngx_add_timer(ev, DRAIN_CHECK_MS) };
        }
    })
}

/// Whether any client's HTTP/1 connection is, or will be, kept alive: one that waits idle for
/// its next request (nginx's exit closes those at once), or one whose response under way
/// promised keep-alive (its head went out before the drain began: nginx's exit would close it
/// right after that response, and the request its client sends next, at once, would be lost).
/// The drain serves both their next request, which closes them. (HTTP/2 connections are
/// marked idle for their whole life, and a GOAWAY tells their clients what to retry: a reload's
/// drain sends it as it begins, nginx's exit otherwise; cached upstream connections have no
/// listening socket.)
///
/// # Safety
/// Event-loop thread.
unsafe fn keep_alive_connections() -> bool {
    // SAFETY: per the function contract.
    unsafe {
        any_client(Client::IdleHttp1)
            || connections().iter().any(|c| {
                http1_request(c).is_some_and(|main| {
                    main.keepalive() != 0
                        && main.header_sent() != 0
                        && main.headers_out.status != NGX_HTTP_SWITCHING_PROTOCOLS as usize
                        && !is_event_stream(main)
                })
            })
    }
}

/// Whether bytes wait unread in `c`'s socket.
fn has_unread_bytes(c: &ngx_connection_t) -> bool {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; `c.fd` is the live connection's socket.
    let rc = unsafe { libc::ioctl(c.fd, libc::FIONREAD, &mut unread) };
    rc == 0 && unread > 0
}

/// Whether any client connection is of `kind`.
///
/// # Safety
/// Event-loop thread.
unsafe fn any_client(kind: Client) -> bool {
    // SAFETY: per the function contract.
    unsafe { connections().iter().any(|c| client(c) == Some(kind)) }
}

/// The cycle's connections, free entries included.
///
/// # Safety
/// Event-loop thread; the slice is not kept past the event.
unsafe fn connections() -> &'static [ngx_connection_t] {
    // SAFETY: per the function contract: the cycle's connection array has `connection_n`
    // entries for the process's life.
    unsafe {
        let cycle = ngx_cycle;
        std::slice::from_raw_parts((*cycle).connections, (*cycle).connection_n)
    }
}

/// The main request of a busy HTTP/1 client connection (the active request may be a
/// subrequest: the connection's fate is the main one's).
///
/// # Safety
/// Event-loop thread; `c` is an entry of the cycle's connection array.
unsafe fn http1_request(c: &ngx_connection_t) -> Option<&ngx_http_request_t> {
    // SAFETY: per the function contract: a busy HTTP/1 connection's `data` is its request,
    // which starts with nginx's signature and the connection. Whatever else a busy client
    // connection's `data` is (a stream module's session, an HTTP/3 stream's) is at least those
    // two fields long, and the request is only read further once both say it is one.
    unsafe {
        if client(c) != Some(Client::Busy) {
            return None;
        }
        let r = c.data.cast::<ngx_http_request_t>();
        if (*r).signature != NGX_HTTP_MODULE || !std::ptr::eq((*r).connection, c) {
            return None;
        }
        let main = &*(*r).main;
        // HTTP/3 requests have keepalive set too: their connection is QUIC's.
        (main.http_version <= NGX_HTTP_VERSION_11 as usize).then_some(main)
    }
}

/// A client's connection on a TCP listening socket, as the drain tells them apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// An HTTP/1 connection waiting for its next request.
    IdleHttp1,
    /// An HTTP/2 connection, which nginx marks idle for its whole life.
    Http2,
    /// Any other: one with a request under way, or another module's.
    Busy,
}

/// What `c` is; `None` for a free entry, a connection of no listening socket (a cached
/// upstream one) or a QUIC one (idle for its whole life; nginx's exit closes it).
///
/// # Safety
/// Event-loop thread; `c` is an entry of the cycle's connection array.
unsafe fn client(c: &ngx_connection_t) -> Option<Client> {
    if c.fd == -1 || c.listening.is_null() || c.data.is_null() {
        return None;
    }
    // SAFETY: per the function contract: a used entry's listening socket is live; an idle
    // HTTP/1 connection's `data` is its ngx_http_connection_t, an HTTP/2 one's its
    // ngx_http_v2_connection_t, whose first field points back to the connection (the other's
    // first field is its address configuration).
    unsafe {
        if (*c.listening).type_ != libc::SOCK_STREAM {
            return None;
        }
        if c.idle() == 0 {
            return Some(Client::Busy);
        }
        Some(
            if std::ptr::eq(*c.data.cast::<*const ngx_connection_t>(), c) {
                Client::Http2
            } else {
                Client::IdleHttp1
            },
        )
    }
}

/// An event stream of a GET has no end of its own to wait for: the worker's exit ends an app's,
/// cleanly (`wsgi_event_stream_grace`), and its client reconnects (one nginx proxies ends with
/// its upstream's, which no drain would wait for either). One that answers a POST (an answer
/// streamed token by token) has an end, as any response.
fn is_event_stream(r: &ngx_http_request_t) -> bool {
    let ct = crate::ffi::ngx_bytes(&r.headers_out.content_type);
    ct.len() >= 17
        && ct[..17].eq_ignore_ascii_case(b"text/event-stream")
        // SAFETY: `r` is a live main request, on the event loop.
        && unsafe { crate::event_streams::resumable(r) }
}
