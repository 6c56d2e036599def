//! Whether another child of this server takes connections, read from Apache's scoreboard: a
//! child due to recycle while none does (its siblings stopped together, and the parent starts
//! their replacements at its maintenance, once a second) waits for one, so that the children do
//! not all stop at once. When they did, the connections waiting meanwhile came to replacements
//! started together, whose threads were all busy at first: the event MPM then closes kept-alive
//! connections at once, and a request a client sent on one in that instant was lost. A child
//! that begins its recycling says so in memory the children share, as the scoreboard says it
//! only once the MPM stops the child, after the drain; and one child leaves at a time.

use std::ffi::c_int;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::bindings::{
    ap_get_scoreboard_process, ap_get_scoreboard_worker_from_indexes, apr_pool_t, server_rec,
    AP_MPMQ_GENERATION, AP_MPMQ_HARD_LIMIT_DAEMONS, AP_MPMQ_HARD_LIMIT_THREADS,
    AP_MPMQ_MAX_DAEMONS, OK, SERVER_BUSY_DNS, SERVER_READY,
};
use crate::ffi_guard::guard;
use crate::mpm::query;

/// The most child slots any MPM has (`ServerLimit`'s ceiling, the event MPM's).
const SLOTS: usize = 20_000;

/// Per child slot, what the child there said of its recycling: its process id (the low
/// [`PID_BITS`]), with since when it is due (milliseconds of the system's monotonic clock, above
/// them), or [`LEAVING`] once it began (the scoreboard says so only once its MPM stops it, after
/// the drain); 0: nothing. Memory the parent maps, shared, before its first fork, and every
/// child inherits.
static ENTRIES: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
const PID_BITS: u32 = 22;
const PID_MASK: u64 = (1 << PID_BITS) - 1;
const LEAVING: u64 = 1 << 63;

fn entries() -> Option<&'static [AtomicU64]> {
    let first = ENTRIES.load(Ordering::Acquire);
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
        if !ENTRIES.load(Ordering::Acquire).is_null() {
            return OK as c_int;
        }
        // SAFETY: a fresh anonymous mapping, zeroed (no child said anything), kept for the life
        // of the process and its children; AtomicU64 has u64's layout.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                SLOTS * std::mem::size_of::<AtomicU64>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if map != libc::MAP_FAILED {
                ENTRIES.store(map.cast(), Ordering::Release);
            }
        }
        OK as c_int
    })
}

/// This child's entry in the shared table: the one of its scoreboard slot.
fn my_entry() -> Option<&'static AtomicU64> {
    let (entries, daemons) = (entries()?, query(AP_MPMQ_HARD_LIMIT_DAEMONS)?);
    let me = std::process::id() as libc::pid_t;
    (0..daemons.min(SLOTS as c_int)).find_map(|slot| {
        // SAFETY: the scoreboard is mapped in every child for its whole life, with `daemons`
        // process slots.
        let pid = unsafe {
            let process = ap_get_scoreboard_process(slot);
            if process.is_null() {
                return None;
            }
            (*process).pid
        };
        (pid == me).then(|| &entries[slot as usize])
    })
}

fn my_pid() -> u64 {
    u64::from(std::process::id()) & PID_MASK
}

/// The system's monotonic clock in milliseconds (the same in every process).
fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain query into a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Notes that this child is due to recycle and waits for a sibling that serves; returns its
/// place among the waiting (see [`may_leave`]).
pub(crate) fn this_one_is_due() -> u64 {
    let due = (now_ms().max(1) << PID_BITS) | my_pid();
    if let Some(entry) = my_entry() {
        entry.store(due, Ordering::SeqCst);
    }
    due
}

/// Notes that this child's recycling began.
pub(crate) fn this_one_leaves() {
    if let Some(entry) = my_entry() {
        entry.store(LEAVING | my_pid(), Ordering::SeqCst);
    }
}

/// Whether this server may run more than one child at once (not `ServerLimit 1`, or one
/// `MaxRequestWorkers` fills): a child that is alone by configuration never has a sibling to
/// wait for.
pub(crate) fn may_have_siblings() -> bool {
    query(AP_MPMQ_MAX_DAEMONS).is_some_and(|n| n > 1)
}

/// Whether this child may leave now: no other child of this generation is on its way out (one
/// leaves at a time), and another has a thread that waits for or serves a connection (one still
/// loading its apps has none yet) and stays: it is not due since before this one (`due`, from
/// [`this_one_is_due`]). Of several due children, the one due first goes once another serves,
/// then the next once that one is gone, and so on.
pub(crate) fn may_leave(due: u64) -> bool {
    let (Some(daemons), Some(threads), Some(generation)) = (
        query(AP_MPMQ_HARD_LIMIT_DAEMONS),
        query(AP_MPMQ_HARD_LIMIT_THREADS),
        query(AP_MPMQ_GENERATION),
    ) else {
        return true;
    };
    let me = std::process::id() as libc::pid_t;
    let entries = entries().unwrap_or_default();
    let mut serves = false;
    for slot in 0..daemons {
        // SAFETY: the scoreboard is mapped in every child for its whole life, with `daemons`
        // process slots of `threads` worker slots each; its fields are read racily, as
        // mod_status reads them (a stale value only delays or hastens the recycle).
        unsafe {
            let process = ap_get_scoreboard_process(slot);
            if process.is_null()
                || (*process).pid == 0
                || (*process).pid == me
                || (*process).generation != generation
            {
                continue;
            }
            if (*process).quiescing != 0 {
                return false;
            }
            let said = entries
                .get(slot as usize)
                .map_or(0, |e| e.load(Ordering::SeqCst));
            // Its own word, not a former child's of that slot.
            let its_own =
                said != 0 && said & PID_MASK == u64::from((*process).pid as u32) & PID_MASK;
            if its_own && said & LEAVING != 0 {
                return false;
            }
            if its_own && said < due {
                continue;
            }
            serves = serves
                || (0..threads).any(|thread| {
                    let worker = ap_get_scoreboard_worker_from_indexes(slot, thread);
                    !worker.is_null()
                        && (SERVER_READY..=SERVER_BUSY_DNS).contains(&((*worker).status as u32))
                });
        }
    }
    serves
}
