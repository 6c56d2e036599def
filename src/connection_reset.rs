//! Resetting a client's TCP connection (RST) instead of closing it (FIN): a response cut before
//! its end, where the connection's close is the response's end (HTTP/1.0, or no chunked
//! encoding and no Content-Length), must read as an error; a clean close reads as the whole
//! response, to its client and to a proxy in front. Both servers use it.

/// Resets the connection on `fd` now, its descriptor left to the server to close in its time:
/// Linux sends the reset at once on a disconnect (`connect` to `AF_UNSPEC`), where the close may
/// be far off (the app's thread still inside Python), and the close that follows sends nothing
/// more. False when it could not (a Unix-domain socket has no reset): nothing changed, and the
/// caller ends the connection as it would have.
pub fn reset(fd: libc::c_int) -> bool {
    // SAFETY: a plain socket call on a descriptor the caller's server holds open, with a
    // zeroed address whose family says "none"; its failure leaves the connection as it was.
    unsafe {
        let mut unspec: libc::sockaddr = std::mem::zeroed();
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd,
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        ) == 0
    }
}
