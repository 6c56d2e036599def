//! The configurations nginx's master has taken: its count, which a worker keeps as its
//! generation (the count when the master forked it). Workers of one configuration share it; a
//! reload's newer workers have a higher one.

use std::sync::atomic::{AtomicU32, Ordering};

static GENERATION: AtomicU32 = AtomicU32::new(0);

/// The master took a configuration (its `init_module`): the next workers' generation.
pub(crate) fn next() -> u32 {
    GENERATION.fetch_add(1, Ordering::AcqRel) + 1
}

/// This worker's generation (in the master: the last configuration taken).
pub(crate) fn current() -> u32 {
    GENERATION.load(Ordering::Acquire)
}
