//! Whether another child of this server takes connections, read from Apache's scoreboard: a
//! child due to recycle while none does (its siblings stopped together, and the parent starts
//! their replacements at its maintenance, once a second) waits for one, so that the children do
//! not all stop at once. When they did, the connections waiting meanwhile came to replacements
//! started together, whose threads were all busy at first: the event MPM then closes kept-alive
//! connections at once, and a request a client sent on one in that instant was lost. A child
//! that begins its recycling says so in memory the children share, as the scoreboard says it
//! only once the MPM stops the child, after the drain.

use std::ffi::c_int;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use crate::bindings::{
    ap_get_scoreboard_process, ap_get_scoreboard_worker_from_indexes, ap_mpm_query, apr_pool_t,
    server_rec, AP_MPMQ_GENERATION, AP_MPMQ_HARD_LIMIT_DAEMONS, AP_MPMQ_HARD_LIMIT_THREADS,
    AP_MPMQ_MAX_DAEMONS, OK, SERVER_BUSY_DNS, SERVER_READY,
};
use crate::ffi_guard::guard;

/// The most child slots any MPM has (`ServerLimit`'s ceiling, the event MPM's).
const SLOTS: usize = 20_000;

/// Per child slot, the process id of the child there that is leaving (it began its recycling:
/// the scoreboard says so only once its MPM stops, after the drain): memory the parent maps,
/// shared, before its first fork, and every child inherits.
static LEAVING: AtomicPtr<AtomicI32> = AtomicPtr::new(std::ptr::null_mut());

fn leaving() -> Option<&'static [AtomicI32]> {
    let first = LEAVING.load(Ordering::Acquire);
    // SAFETY: null, or the parent's shared mapping of `SLOTS` entries, never unmapped.
    (!first.is_null()).then(|| unsafe { std::slice::from_raw_parts(first, SLOTS) })
}

/// Maps the entries, once, in the parent (its first `post_config`, before any child).
pub(crate) unsafe extern "C" fn post_config(
    _pconf: *mut apr_pool_t,
    _plog: *mut apr_pool_t,
    _ptemp: *mut apr_pool_t,
    _s: *mut server_rec,
) -> c_int {
    guard("post_config", OK as c_int, || {
        if !LEAVING.load(Ordering::Acquire).is_null() {
            return OK as c_int;
        }
        // SAFETY: a fresh anonymous mapping, zeroed (no child is leaving), kept for the life of
        // the process and its children; AtomicI32 has i32's layout.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                SLOTS * std::mem::size_of::<AtomicI32>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if map != libc::MAP_FAILED {
                LEAVING.store(map.cast(), Ordering::Release);
            }
        }
        OK as c_int
    })
}

/// Notes that this child is leaving (its recycling begins), for its siblings' `another_serves`.
pub(crate) fn this_one_leaves() {
    let (Some(leaving), Some(daemons)) = (leaving(), query(AP_MPMQ_HARD_LIMIT_DAEMONS)) else {
        return;
    };
    let me = std::process::id() as libc::pid_t;
    for slot in 0..daemons.min(SLOTS as c_int) {
        // SAFETY: the scoreboard is mapped in every child for its whole life, with `daemons`
        // process slots.
        let pid = unsafe {
            let process = ap_get_scoreboard_process(slot);
            if process.is_null() {
                continue;
            }
            (*process).pid
        };
        if pid == me {
            leaving[slot as usize].store(me, Ordering::SeqCst);
            return;
        }
    }
}

fn query(what: u32) -> Option<c_int> {
    let mut value: c_int = 0;
    // SAFETY: a plain query into an int.
    (unsafe { ap_mpm_query(what as c_int, &mut value) } == 0).then_some(value)
}

/// Whether this server may run more than one child at once (not `ServerLimit 1`, or one
/// `MaxRequestWorkers` fills): a child that is alone by configuration never has a sibling to
/// wait for.
pub(crate) fn may_have_siblings() -> bool {
    query(AP_MPMQ_MAX_DAEMONS).is_some_and(|n| n > 1)
}

/// Whether another child of this generation, not stopping nor leaving, has a thread that waits
/// for or serves a connection (one still loading its apps has none yet).
pub(crate) fn another_serves() -> bool {
    let (Some(daemons), Some(threads), Some(generation)) = (
        query(AP_MPMQ_HARD_LIMIT_DAEMONS),
        query(AP_MPMQ_HARD_LIMIT_THREADS),
        query(AP_MPMQ_GENERATION),
    ) else {
        return true;
    };
    let me = std::process::id() as libc::pid_t;
    let leaving = leaving().unwrap_or_default();
    (0..daemons).any(|slot| {
        // SAFETY: the scoreboard is mapped in every child for its whole life, with `daemons`
        // process slots of `threads` worker slots each; its fields are read racily, as
        // mod_status reads them (a stale value only delays or hastens the recycle).
        unsafe {
            let process = ap_get_scoreboard_process(slot);
            if process.is_null()
                || (*process).pid == 0
                || (*process).pid == me
                || (*process).quiescing != 0
                || (*process).generation != generation
                || leaving
                    .get(slot as usize)
                    .is_some_and(|pid| pid.load(Ordering::SeqCst) == (*process).pid)
            {
                return false;
            }
            (0..threads).any(|thread| {
                let worker = ap_get_scoreboard_worker_from_indexes(slot, thread);
                !worker.is_null()
                    && (SERVER_READY..=SERVER_BUSY_DNS).contains(&((*worker).status as u32))
            })
        }
    })
}
