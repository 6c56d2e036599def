//! Apache's listening sockets are not for the processes an app forks: in each forked child they
//! are closed, so a child that outlives Apache's does not keep the port bound (see the core's
//! `forked`). Apache keeps no list of its connections to close as well.

use crate::bindings::{ap_listeners, apr_os_sock_get, apr_os_sock_t, APR_SUCCESS};

/// Registers the fork handler; once per Apache child.
pub(crate) fn close_listeners_in_children() {
    ngx_wsgi::forked::in_every_forked_child(close_in_child);
}

/// In a freshly forked child, whose only thread is the one that forked: reads of the listener
/// list (fixed once the child serves), APR's accessor of a socket's descriptor (a field read)
/// and close(2). The Apache child's sockets stay open: a close drops only the forked child's
/// reference.
extern "C" fn close_in_child() {
    // SAFETY: as above; the list ends with NULL.
    unsafe {
        let mut listener = ap_listeners;
        while !listener.is_null() {
            let mut fd: apr_os_sock_t = -1;
            if !(*listener).sd.is_null()
                && apr_os_sock_get(&mut fd, (*listener).sd) == APR_SUCCESS as i32
                && fd >= 0
            {
                libc::close(fd);
            }
            listener = (*listener).next;
        }
    }
}
