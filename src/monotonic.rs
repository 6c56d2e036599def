//! The system's monotonic clock in ms: one clock for every process of a server (nginx's cached
//! clock is each worker's own), for times that processes share or compare.

/// Now, on the monotonic clock, in ms.
pub fn ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}
