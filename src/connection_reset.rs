//! Resetting a client's TCP connection (RST) instead of closing it (FIN): a response cut before
//! its end, where the connection's close is the response's end (HTTP/1.0, or no chunked
//! encoding and no Content-Length), must read as an error; a clean close reads as the whole
//! response, to its client and to a proxy in front. Both servers use it.

/// Resets the connection on `fd` now, its descriptor left to the server to close in its time:
/// the close with no lingering (`SO_LINGER` 0) resets too, and Linux sends the reset at once on
/// a disconnect (`connect` to `AF_UNSPEC`), where the close may be far off (the app's thread
/// still inside Python). On a socket that is not TCP nothing changes.
pub fn reset(fd: libc::c_int) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: plain socket calls on a descriptor the caller's server holds open; their failure
    // leaves the connection as it was.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        let mut unspec: libc::sockaddr = std::mem::zeroed();
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd,
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}
