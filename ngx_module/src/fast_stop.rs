//! Whether nginx asked this worker to stop at once (`nginx -s stop`, or the TERM after a QUIT
//! that systemd's and Debian's stop send), from any thread: the core cuts the waits of a
//! graceful exit under way short, as a fast stop's are, since nginx's master kills a worker
//! still there soon after. The master tells an exiting worker through its channel, which the
//! worker's event loop, blocked in the exit's waits, does not read: the request is looked for
//! there, unread, as well as in the flag nginx's signal handler sets.

use std::mem::size_of;

use nginx_sys::{ngx_channel, ngx_int_t, ngx_pid_t, ngx_terminate, ngx_uint_t, NGX_CMD_TERMINATE};

/// nginx's `ngx_channel_t` (src/os/unix/ngx_channel.h), one message on the channel.
#[repr(C)]
struct ChannelMessage {
    command: ngx_uint_t,
    pid: ngx_pid_t,
    slot: ngx_int_t,
    fd: libc::c_int,
}

/// How many queued messages are looked at (a log reopen may come before the stop).
const LOOKED_AT: usize = 8;

/// Whether nginx asked for a fast stop.
pub(crate) fn asked() -> bool {
    // SAFETY: a flag nginx's signal handler sets; a plain read of an int.
    if unsafe { std::ptr::read_volatile(std::ptr::addr_of!(ngx_terminate)) } != 0 {
        return true;
    }
    // SAFETY: the worker's end of its channel, set before the apps load and open for the
    // worker's life; the read only peeks (the event loop reads the messages, if it runs again).
    let fd = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(ngx_channel)) };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; LOOKED_AT * size_of::<ChannelMessage>()];
    // SAFETY: a peek into a buffer of its own length.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n <= 0 {
        return false;
    }
    buf[..n as usize]
        .chunks_exact(size_of::<ChannelMessage>())
        .any(|message| {
            // SAFETY: `message` holds a whole ngx_channel_t's bytes (read unaligned).
            let message =
                unsafe { std::ptr::read_unaligned(message.as_ptr().cast::<ChannelMessage>()) };
            message.command == NGX_CMD_TERMINATE as ngx_uint_t
        })
}
