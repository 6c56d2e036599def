//! Which workers of this configuration accept connections, and how busy each is: a recycling
//! worker knows whether another one takes the connections it stops accepting (a lone worker
//! cannot hand them over: it goes on accepting while it drains, every response closing its
//! connection), and a worker busy in Python whether an idle one would take its new ones
//! (`busy_handoff.rs`).
//!
//! The workers meet in memory the master maps, shared, before its first fork: one entry per
//! worker slot (nginx's `ngx_worker`, which a respawned worker takes over), holding the process
//! id and generation (`generation.rs`) of the worker accepting
//! there, or 0. A worker clears its entry as it starts, before it imports the apps, sets it once
//! it is ready, and clears it again as it stops accepting (its recycling, a reload's quit, the
//! exit the descriptor watch starts, and while it leaves new connections to an idle one). An
//! entry whose process is gone (a crash) does not count. Beside each entry, the share of a core
//! the slot's worker used lately, in thousandths (0 when it has nothing to do).

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use nginx_sys::NGX_MAX_PROCESSES;

const SLOTS: usize = NGX_MAX_PROCESSES as usize;

/// The entries, then the loads: `2 * SLOTS` words.
static ENTRIES: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

fn table() -> Option<&'static [AtomicU64]> {
    let first = ENTRIES.load(Ordering::Acquire);
    // SAFETY: the pointer is null or the master's shared mapping of `2 * SLOTS` words, never
    // unmapped.
    (!first.is_null()).then(|| unsafe { std::slice::from_raw_parts(first, 2 * SLOTS) })
}

fn entries() -> Option<&'static [AtomicU64]> {
    table().map(|t| &t[..SLOTS])
}

fn loads() -> Option<&'static [AtomicU64]> {
    table().map(|t| &t[SLOTS..])
}

/// Maps the entries, once, in the master (its `init_module`), before any fork.
pub(crate) fn map() {
    if !ENTRIES.load(Ordering::Acquire).is_null() {
        return;
    }
    // SAFETY: a fresh anonymous shared mapping, zeroed; nothing else refers to it yet.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * SLOTS * size_of::<AtomicU64>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if map != libc::MAP_FAILED {
        ENTRIES.store(map.cast(), Ordering::Release);
    }
}

fn entry(pid: u32, generation: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(generation)
}

/// This process's slot and entry: a worker of a master's has them; nginx without a master has
/// no other worker.
fn mine() -> Option<(usize, u64)> {
    // SAFETY: plain reads of nginx's process role and worker number, set before init_process.
    let (role, slot) = unsafe { (nginx_sys::ngx_process as u32, nginx_sys::ngx_worker) };
    (role == nginx_sys::NGX_PROCESS_WORKER && slot < SLOTS).then(|| {
        (
            slot,
            entry(std::process::id(), crate::generation::current()),
        )
    })
}

/// The worker starts (from `init_process`, before the apps are imported): it does not accept
/// yet (the entry, and the load, may be its crashed predecessor's).
pub(crate) fn starting() {
    if let (Some(all), Some((slot, _))) = (entries(), mine()) {
        all[slot].store(0, Ordering::SeqCst);
    }
    publish_load(0);
}

/// The worker is ready, its apps all loaded: from its loop's first turn it accepts. (One that
/// answers 500 for an app it could not load is left out: a recycling worker keeps its own
/// connections rather than send them there.)
pub(crate) fn ready() {
    if let (Some(all), Some((slot, me))) = (entries(), mine()) {
        all[slot].store(me, Ordering::SeqCst);
    }
}

/// The worker stops accepting (or is about to): its entry is cleared. Only its own: a newer
/// generation's worker may have taken the slot since.
pub(crate) fn withdraw() {
    if let (Some(all), Some((slot, me))) = (entries(), mine()) {
        // Sequentially consistent, with the loads of `others_accept`: of two workers
        // withdrawing at once, at least one sees the other's entry cleared, and goes on
        // accepting.
        let _ = all[slot].compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Whether this worker's entry is set: it is ready and accepts.
pub(crate) fn listed() -> bool {
    matches!((entries(), mine()), (Some(all), Some((slot, me))) if all[slot].load(Ordering::SeqCst) == me)
}

/// The slots of the other workers of this one's configuration that accept.
fn accepting_others() -> impl Iterator<Item = usize> {
    let found = entries().zip(mine());
    (0..SLOTS).filter(move |&other| {
        let Some((all, (slot, me))) = found else {
            return false;
        };
        let e = all[other].load(Ordering::SeqCst);
        // A worker that crashed, and was not respawned, left its entry.
        other != slot
            && e != 0
            && e as u32 == me as u32
            && ngx_wsgi::process_alive::exists((e >> 32) as libc::pid_t)
    })
}

/// Whether another worker of this one's configuration accepts (after [`withdraw`]).
pub(crate) fn others_accept() -> bool {
    accepting_others().next().is_some()
}

/// Publishes this worker's load: the share of a core it used lately, in thousandths.
pub(crate) fn publish_load(permille: u32) {
    if let (Some(loads), Some((slot, _))) = (loads(), mine()) {
        loads[slot].store(u64::from(permille), Ordering::SeqCst);
    }
}

/// The least load of the other workers that accept (after [`withdraw`]); None when none does.
pub(crate) fn least_load_of_others() -> Option<u32> {
    let loads = loads()?;
    accepting_others()
        .map(|slot| loads[slot].load(Ordering::SeqCst) as u32)
        .min()
}
