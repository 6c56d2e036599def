//! `wsgi_sticky_clients on`: every connection from one client address is accepted by the same
//! worker, so that apps keeping sessions in the process (Engine.IO's long-polling under
//! Socket.IO, pgAdmin, marimo) work with several workers, as behind a proxy's `ip_hash`.
//!
//! nginx gives each worker a socket of its own for a `listen ... reuseport` address, and the
//! kernel picks the socket of each new connection by a hash of both ends' addresses and ports:
//! one client's connections spread over the workers. A classic BPF program attached to the
//! sockets' group (as nginx's QUIC module attaches its own, for QUIC's connection ids) picks it
//! by the client's address alone. The choice holds while the group's sockets do: a worker
//! recycled or restarted takes its predecessor's socket, and a reload that keeps
//! `worker_processes` keeps the sockets. Master process, at each configuration.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::{
    sock_filter, sock_fprog, BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K,
    BPF_LD, BPF_MISC, BPF_MOD, BPF_MUL, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X, BPF_XOR,
    SKF_NET_OFF,
};
use nginx_sys::{ngx_cycle_t, ngx_listening_t};

/// This master attached the program at an earlier configuration: reloads keep the sockets, and
/// the kernel keeps the program on them until it is replaced.
static ATTACHED: AtomicBool = AtomicBool::new(false);

/// What replaces the program where stickiness ends: an index past every group's sockets, which
/// has the kernel pick by its own hash again (on every kernel with the option; detaching needs
/// Linux 5.8).
fn kernels_own_choice() -> Vec<sock_filter> {
    vec![sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: u32::MAX,
    }]
}

/// The program for a group of `sockets` sockets: the index of the socket for a connection's
/// first packet, from its source address (an IPv6 one folded to 32 bits), mixed so that
/// neighbouring addresses spread.
fn program(sockets: u32) -> Vec<sock_filter> {
    // The network header's offset in the program's view of the packet (which begins past the
    // TCP header).
    let net = SKF_NET_OFF as u32;
    let op = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let load_word = |at: u32| op(BPF_LD | BPF_W | BPF_ABS, net + at);
    let tax = op(BPF_MISC | BPF_TAX, 0);
    let xor_x = op(BPF_ALU | BPF_XOR | BPF_X, 0);
    let mut p = vec![
        // The IP version: the first byte's high nibble.
        op(BPF_LD | BPF_B | BPF_ABS, net),
        op(BPF_ALU | BPF_RSH | BPF_K, 4),
        sock_filter {
            code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            jt: 2,
            jf: 0,
            k: 6,
        },
        // IPv4: the source address, at 12.
        load_word(12),
        op(BPF_JMP | BPF_JA, 10),
        // IPv6: the source address's four words, at 8, xored.
        load_word(8),
        tax,
        load_word(12),
        xor_x,
        tax,
        load_word(16),
        xor_x,
        tax,
        load_word(20),
        xor_x,
    ];
    p.extend([
        tax,
        op(BPF_ALU | BPF_RSH | BPF_K, 16),
        xor_x,
        op(BPF_ALU | BPF_MUL | BPF_K, 0x045d_9f3b),
        tax,
        op(BPF_ALU | BPF_RSH | BPF_K, 16),
        xor_x,
        op(BPF_ALU | BPF_MOD | BPF_K, sockets.max(1)),
        op(BPF_RET | BPF_A, 0),
    ]);
    p
}

/// Attaches `filter` to the reuseport group of the listening socket `fd` (the program is the
/// group's, whichever of its sockets it is given through).
fn attach(fd: RawFd, mut filter: Vec<sock_filter>) -> io::Result<()> {
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const sock_fprog).cast(),
            std::mem::size_of::<sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `listen ... reuseport` TCP address: its text, how many sockets it has (one a worker),
/// and one of them that is open (-1: none, as under `nginx -t`).
pub(crate) struct Group {
    address: String,
    sockets: u32,
    socket: RawFd,
}

/// The cycle's `reuseport` TCP addresses, each with its sockets (one a worker).
///
/// # Safety
/// `cycle` is live, in the master (or a single process), its listening array set.
pub(crate) unsafe fn groups(cycle: &ngx_cycle_t) -> Vec<Group> {
    // SAFETY: per the function contract: the array has `nelts` entries, each with its address
    // (`socklen` bytes) and its text.
    let listening = unsafe {
        std::slice::from_raw_parts(
            cycle.listening.elts as *const ngx_listening_t,
            cycle.listening.nelts,
        )
    };
    let mut by_address: BTreeMap<Vec<u8>, Group> = BTreeMap::new();
    for ls in listening.iter().filter(|ls| is_http(ls)) {
        if ls.reuseport() == 0 || ls.type_ != libc::SOCK_STREAM || ls.sockaddr.is_null() {
            continue;
        }
        // SAFETY: as above.
        let key = unsafe {
            std::slice::from_raw_parts(ls.sockaddr.cast::<u8>(), ls.socklen as usize).to_vec()
        };
        by_address
            .entry(key)
            .and_modify(|g| {
                g.sockets += 1;
                if g.socket == -1 {
                    g.socket = ls.fd;
                }
            })
            .or_insert_with(|| Group {
                address: String::from_utf8_lossy(crate::ffi::ngx_bytes(&ls.addr_text)).into_owned(),
                sockets: 1,
                socket: ls.fd,
            });
    }
    by_address.into_values().collect()
}

/// Whether `ls` is an http block's (not a `stream` or `mail` one's).
#[cfg(not(test))]
fn is_http(ls: &ngx_listening_t) -> bool {
    ls.handler.is_some_and(|h| {
        std::ptr::fn_addr_eq(
            h,
            nginx_sys::ngx_http_init_connection as unsafe extern "C" fn(_),
        )
    })
}

#[cfg(test)]
fn is_http(_ls: &ngx_listening_t) -> bool {
    true
}

/// The directive is off: where this master attached the program before (a reload that turned
/// it off), the kernel picks by its own hash again. Says what it did.
pub(crate) fn let_go(groups: &[Group]) -> Option<String> {
    if !ATTACHED.swap(false, Ordering::Relaxed) {
        return None;
    }
    for group in groups.iter().filter(|g| g.socket != -1) {
        // A group that refuses keeps the program; the next reload tries again.
        if attach(group.socket, kernels_own_choice()).is_err() {
            ATTACHED.store(true, Ordering::Relaxed);
        }
    }
    Some("wsgi_sticky_clients is off: the kernel picks each connection's worker again".into())
}

/// Attaches the program to each group's sockets; says what it did, or what failed (a group
/// that failed gets the kernel's own choice back, the others keep the program).
pub(crate) fn apply(groups: &[Group]) -> Result<String, String> {
    if groups.is_empty() {
        return Err(
            "wsgi_sticky_clients is on, but no `listen` has `reuseport`: without a \
                    socket per worker, nginx cannot send a client to one (add `reuseport` to \
                    the `listen` of the servers whose clients should stick)"
                .to_string(),
        );
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for group in groups.iter().filter(|g| g.socket != -1) {
        let sockets = group.sockets;
        match attach(group.socket, program(sockets)) {
            Ok(()) => {
                ATTACHED.store(true, Ordering::Relaxed);
                done.push(format!("{} ({sockets} workers)", group.address));
            }
            Err(e) => {
                let _ = attach(group.socket, kernels_own_choice());
                failed.push(format!("{}: {e}", group.address));
            }
        }
    }
    if failed.is_empty() {
        Ok(format!(
            "wsgi_sticky_clients: each client address goes to one worker on {}",
            done.join(", ")
        ))
    } else {
        Err(format!(
            "wsgi_sticky_clients: the program could not be attached to the sockets of {}; \
             their connections go to any worker",
            failed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A listening socket with SO_REUSEPORT on `port` (0: any): 127.0.0.1, or with `dual` the
    /// dual-stack `[::]`.
    fn reuseport_listener(dual: bool, port: u16) -> TcpListener {
        let family = if dual { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket calls on a descriptor this function owns; each address is a
        // valid sockaddr of its family, passed with its size.
        unsafe {
            let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let owned = OwnedFd::from_raw_fd(fd);
            let int_size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let one: libc::c_int = 1;
            let zero: libc::c_int = 0;
            let opt = |level, name, value: &libc::c_int| {
                let value = (value as *const libc::c_int).cast();
                assert_eq!(libc::setsockopt(fd, level, name, value, int_size), 0);
            };
            opt(libc::SOL_SOCKET, libc::SO_REUSEPORT, &one);
            let rc = if dual {
                opt(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &zero);
                let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
                addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                addr.sin6_port = port.to_be();
                let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                libc::bind(fd, (&addr as *const libc::sockaddr_in6).cast(), len)
            } else {
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len)
            };
            assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
            assert_eq!(libc::listen(fd, 128), 0);
            let listener = TcpListener::from(owned);
            listener.set_nonblocking(true).unwrap();
            listener
        }
    }

    /// Two sockets of one group, the program attached: the two and their port.
    fn group(dual: bool) -> ([TcpListener; 2], u16) {
        let first = reuseport_listener(dual, 0);
        let port = first.local_addr().unwrap().port();
        let second = reuseport_listener(dual, port);
        attach(first.as_raw_fd(), program(2)).unwrap();
        ([first, second], port)
    }

    /// Which of `sockets` took the connection just made.
    fn landed(sockets: &[TcpListener; 2]) -> usize {
        // The handshake may complete a moment after the connect returns.
        for _ in 0..1000 {
            let on = (sockets[0].accept().is_ok(), sockets[1].accept().is_ok());
            assert!(!(on.0 && on.1), "one socket has the connection");
            if on.0 || on.1 {
                return usize::from(on.1);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no socket took the connection");
    }

    /// Connects from `source` (a loopback address) to 127.0.0.1:`port`.
    fn connect_from(source: Ipv4Addr, port: u16) -> OwnedFd {
        // SAFETY: plain socket calls on a descriptor this function owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let owned = OwnedFd::from_raw_fd(fd);
            let at = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let from = at(source, 0);
            assert_eq!(
                libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len),
                0
            );
            let to = at(Ipv4Addr::LOCALHOST, port);
            assert_eq!(
                libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len),
                0
            );
            owned
        }
    }

    /// 32 IPv4 source addresses, 4 connections each: each address on one socket, both used.
    fn ipv4_clients_stick(dual: bool) {
        let (sockets, port) = group(dual);
        let mut seen = [false; 2];
        let mut clients = Vec::new();
        for last in 2..34u8 {
            let source = Ipv4Addr::new(127, 0, 0, last);
            let mut reached = Vec::new();
            for _ in 0..4 {
                clients.push(connect_from(source, port));
                reached.push(landed(&sockets));
            }
            assert!(
                reached.iter().all(|&s| s == reached[0]),
                "{source}: {reached:?}"
            );
            seen[reached[0]] = true;
        }
        assert_eq!(seen, [true, true], "32 addresses spread over both sockets");
    }

    #[test]
    fn each_source_address_reaches_one_socket_of_the_group() {
        ipv4_clients_stick(false);
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_socket_too() {
        // Their packets are IPv4 ones, whatever the socket's family.
        ipv4_clients_stick(true);
    }

    #[test]
    fn an_ipv6_client_reaches_one_socket() {
        let (sockets, port) = group(true);
        let mut reached = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..12 {
            match TcpStream::connect(("::1", port)) {
                Ok(c) => clients.push(c),
                // A machine without IPv6 on its loopback.
                Err(_) => return,
            }
            reached.push(landed(&sockets));
        }
        assert!(reached.iter().all(|&s| s == reached[0]), "{reached:?}");
    }

    #[test]
    fn no_reuseport_address_is_a_configuration_error() {
        let e = apply(&[]).unwrap_err();
        assert!(e.starts_with("wsgi_sticky_clients is on, but no `listen` has `reuseport`"));
    }
}
