//! nginx's sockets are not for the processes an app forks: in each forked child, the worker's
//! listening sockets and connections are closed (see the core's `forked`).

use nginx_sys::{ngx_connection_t, ngx_cycle, ngx_listening_t};

/// Registers the fork handler; once per worker.
pub(crate) fn close_nginx_sockets_in_children() {
    ngx_wsgi::forked::in_every_forked_child(close_in_child);
}

/// In a freshly forked child, whose only thread is the one that forked: reads of the worker's
/// cycle (fixed while the worker runs; a connection's fd is -1 before nginx closes it) and
/// close(2), which is async-signal-safe. The parent's sockets stay open: a child's close only
/// drops its own reference.
extern "C" fn close_in_child() {
    // SAFETY: as above; the cycle's arrays hold `nelts` listening sockets and `connection_n`
    // connections.
    unsafe {
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
    }
}

fn close_fd(fd: libc::c_int) {
    if fd >= 0 {
        // SAFETY: closes the child's copy of an nginx socket; errors (already closed) are moot.
        unsafe { libc::close(fd) };
    }
}
