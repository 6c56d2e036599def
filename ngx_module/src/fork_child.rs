//! nginx's sockets are not for the processes an app forks: in each forked child, the worker's
//! listening sockets, connections and channels to nginx's other processes are closed (see the
//! core's `forked`). Its log entries say
//! its own pid, not the worker's.

use nginx_sys::{ngx_connection_t, ngx_cycle, ngx_listening_t, ngx_process_t};

/// Registers the fork handler; once per worker.
pub(crate) fn close_nginx_sockets_in_children() {
    ngx_wsgi::forked::in_every_forked_child(close_in_child);
}

/// In a freshly forked child, whose only thread is the one that forked: a write of nginx's pid
/// global, reads of the worker's cycle (fixed while the worker runs; a connection's fd is -1
/// before nginx closes it) and close(2), which is async-signal-safe. The parent's sockets stay
/// open: a child's close only drops its own reference.
extern "C" fn close_in_child() {
    // SAFETY: as above; the cycle's arrays hold `nelts` listening sockets and `connection_n`
    // connections.
    unsafe {
        // getpid(2) is async-signal-safe; nginx's entries take the pid from `ngx_pid`.
        nginx_sys::ngx_pid = libc::getpid();
        let cycle = ngx_cycle;
        if cycle.is_null() {
            return;
        }
        let listening = (*cycle).listening.elts as *const ngx_listening_t;
        if !listening.is_null() {
            for i in 0..(*cycle).listening.nelts {
                close_fd((*listening.add(i)).fd);
            }
        }
        let connections: *const ngx_connection_t = (*cycle).connections;
        if !connections.is_null() {
            for i in 0..(*cycle).connection_n {
                close_fd((*connections.add(i)).fd);
            }
        }
        // The worker's ends of its siblings' channels (worker_processes > 1; its own channel
        // is a connection, closed above). Every slot: the master passes the channels of the
        // processes it starts later without the worker's `ngx_last_process` growing. nginx
        // sets a sibling's to -1 when it closes it (a slot never used has pid 0); the numbers
        // of the ends it closed at the worker's start (its own slot's) are stale.
        let processes = std::ptr::addr_of!(nginx_sys::ngx_processes) as *const ngx_process_t;
        for n in 0..nginx_sys::NGX_MAX_PROCESSES as usize {
            let process = &*processes.add(n);
            if process.pid > 0 && n as isize != nginx_sys::ngx_process_slot {
                close_fd(process.channel[0]);
            }
        }
    }
}

/// Closes `fd` when it is a socket. The worker's eventfd is a connection too, but the child's
/// code may still write a wake-up to its number: closed, a file the child opens next could get
/// that number and those bytes. A listening socket is also its own connection: its second
/// close fails (EBADF) and nothing else can have taken the number in a one-thread child.
fn close_fd(fd: libc::c_int) {
    if fd < 0 {
        return;
    }
    // SAFETY: fstat(2) and close(2) are async-signal-safe; `st` is a buffer fstat fills.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK {
            libc::close(fd);
        }
    }
}
