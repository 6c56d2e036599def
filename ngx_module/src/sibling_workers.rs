//! Which workers of this configuration accept connections, so that a recycling worker knows
//! whether another one takes the connections it stops accepting. A lone worker cannot hand them
//! over: it goes on accepting while it drains, every response closing its connection.
//!
//! The workers meet in memory the master maps, shared, before its first fork: one entry per
//! worker slot (nginx's `ngx_worker`, which a respawned worker takes over), holding the
//! generation (the reload hand-over's count of configurations) of the worker accepting there,
//! or 0. A worker clears its entry as it starts, before it imports the apps (a crashed one's
//! stale entry is gone once its successor starts), and sets it once it is ready.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use nginx_sys::NGX_MAX_PROCESSES;

const SLOTS: usize = NGX_MAX_PROCESSES as usize;

static ENTRIES: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());

fn entries() -> Option<&'static [AtomicU32]> {
    let first = ENTRIES.load(Ordering::Acquire);
    // SAFETY: the pointer is null or the master's shared mapping of `SLOTS` entries, never
    // unmapped.
    (!first.is_null()).then(|| unsafe { std::slice::from_raw_parts(first, SLOTS) })
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
            SLOTS * size_of::<AtomicU32>(),
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

/// This process's slot: a worker of a master's has one; nginx without a master has no other
/// worker.
fn my_slot() -> Option<usize> {
    // SAFETY: plain reads of nginx's process role and worker number, set before init_process.
    let (role, slot) = unsafe { (nginx_sys::ngx_process as u32, nginx_sys::ngx_worker) };
    (role == nginx_sys::NGX_PROCESS_WORKER && slot < SLOTS).then_some(slot)
}

/// The worker starts (from `init_process`, before the apps are imported): it does not accept yet.
pub(crate) fn starting() {
    if let (Some(all), Some(slot)) = (entries(), my_slot()) {
        all[slot].store(0, Ordering::Release);
    }
}

/// The worker is ready: from its loop's first turn it accepts.
pub(crate) fn ready() {
    if let (Some(all), Some(slot)) = (entries(), my_slot()) {
        all[slot].store(crate::reload_handover::generation(), Ordering::Release);
    }
}

/// The worker stops accepting, if another worker of its configuration accepts; whether one did.
/// The worker's entry is cleared either way: it is on its way out.
pub(crate) fn leave_to_others() -> bool {
    let (Some(all), Some(mine)) = (entries(), my_slot()) else {
        return false;
    };
    let generation = crate::reload_handover::generation();
    // Only its own entry: a newer generation's worker may have taken the slot since.
    // Sequentially consistent, with the loads: of two workers leaving at once, at least one
    // sees the other's entry cleared, and goes on accepting.
    let _ = all[mine].compare_exchange(generation, 0, Ordering::SeqCst, Ordering::SeqCst);
    all.iter()
        .enumerate()
        .any(|(slot, entry)| slot != mine && entry.load(Ordering::SeqCst) == generation)
}
