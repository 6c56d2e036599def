//! Whether nginx asked this worker to stop at once (`nginx -s stop`, or the TERM after a QUIT
//! that systemd's and Debian's stop send), from any thread, once the worker is in its exit: the
//! core cuts the waits of a graceful exit under way short, as a fast stop's are, since nginx's
//! master kills a worker still there soon after. The master tells an exiting worker through its
//! channel, which the worker's event loop, blocked in the exit's waits and never back, no longer
//! reads: the exit reads it, as well as the flag nginx's signal handler sets.

use std::mem::size_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nginx_sys::{
    ngx_channel, ngx_int_t, ngx_pid_t, ngx_process, ngx_terminate, ngx_uint_t, NGX_CMD_TERMINATE,
    NGX_PROCESS_WORKER,
};

/// nginx's `ngx_channel_t` (src/os/unix/ngx_channel.h), one message on the channel.
#[repr(C)]
struct ChannelMessage {
    command: ngx_uint_t,
    pid: ngx_pid_t,
    slot: ngx_int_t,
    fd: libc::c_int,
}

/// A stop was read from the channel.
static SEEN: AtomicBool = AtomicBool::new(false);
/// One reader at a time (the exit's waits look from several threads).
static READING: Mutex<()> = Mutex::new(());

/// Whether nginx asked for a fast stop. Only for an exiting worker: it consumes the channel's
/// messages, which its event loop will not read again.
pub(crate) fn asked() -> bool {
    if SEEN.load(Ordering::SeqCst)
        // SAFETY: a flag nginx's signal handler sets; a plain read of an int.
        || unsafe { std::ptr::read_volatile(std::ptr::addr_of!(ngx_terminate)) } != 0
    {
        return true;
    }
    // SAFETY: set once at the process's start.
    if unsafe { ngx_process } != NGX_PROCESS_WORKER as ngx_uint_t {
        return false;
    }
    let _one = READING.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the worker's end of its channel (a worker has one for its life unless its master
    // went, and then nothing writes to it: a read finds nothing).
    let fd = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(ngx_channel)) };
    if fd < 0 {
        return false;
    }
    while let Some(message) = read_message(fd) {
        if message.command == NGX_CMD_TERMINATE as ngx_uint_t {
            SEEN.store(true, Ordering::SeqCst);
            return true;
        }
    }
    false
}

/// The next whole message on the channel, if one is there now; a descriptor it carries (a new
/// sibling's channel) is closed, as nothing will use it.
fn read_message(fd: libc::c_int) -> Option<ChannelMessage> {
    // SAFETY: a zeroed ngx_channel_t is valid (plain integers).
    let mut message: ChannelMessage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: std::ptr::addr_of_mut!(message).cast(),
        iov_len: size_of::<ChannelMessage>(),
    };
    // Room for one descriptor, as nginx sends at most one.
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; its buffers are the two above, of their lengths.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = size_of::<[u64; 4]>() as _;
    // SAFETY: as above; a non-blocking read of one message's bytes.
    let n = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_DONTWAIT) };
    // SAFETY: the control buffer holds what the kernel wrote; CMSG_* walk it within its length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let passed = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                libc::close(passed);
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    (n == size_of::<ChannelMessage>() as isize).then_some(message)
}
