//! Prometheus metrics of all of a server's processes together: counters and per-process gauges in
//! one block of shared memory that the adapter maps into every process (nginx: a shared memory
//! zone; Apache: an anonymous mapping its parent makes), updated with atomic operations, and the
//! Prometheus text that renders them.
//!
//! The block starts with a header (magic, layout version, entry count, size), written before any
//! process counts into it and checked before a block is reused (an nginx reload, an Apache
//! restart): a block of another layout (another version of this code) is never read as this one.
//!
//! Gauges are per process, in an entry stamped with the process's pid; rendering sums only the
//! entries of processes that are alive, so a process that dies takes its gauges with it instead of
//! leaving them to drift.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::head::ResponseHead;
use crate::request::{Outcome, OutcomeKind};

/// Upper bounds (seconds) of the request duration histogram's buckets.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const MAGIC: u64 = u64::from_le_bytes(*b"ngxwsgiM");
/// Changes whenever the layout below changes.
const VERSION: u32 = 2;

#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    /// Gauge entries after the counters.
    entries: u32,
    /// The whole block, in bytes.
    size: u64,
}

#[repr(C)]
struct Counters {
    /// Responses by status class: 1xx .. 5xx.
    responses: [AtomicU64; 5],
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_sum_us: AtomicU64,
    duration_count: AtomicU64,
    gil_wait_us: AtomicU64,
    timeouts: AtomicU64,
    client_gone: AtomicU64,
    recycles: AtomicU64,
    /// Answered 503 because too many requests waited.
    refused: AtomicU64,
}

/// One process's gauges.
#[repr(C)]
struct Gauges {
    /// The pid of the process that counts here; 0: free; -1: being reset for a new owner.
    owner: AtomicI64,
    in_flight: AtomicI64,
    queued: AtomicI64,
    threads_busy: AtomicI64,
    lost_slots: AtomicI64,
    /// Threads of the module's own pools, busy or idle.
    pool_threads: AtomicI64,
    /// ASGI app tasks on the process's event loop (started, not ended).
    asgi_tasks: AtomicI64,
    /// ASGI WebSocket connections (handshake or open).
    websockets: AtomicI64,
}

/// A block of metrics in shared memory (its start: `header.entries` gauge entries follow it).
#[repr(C)]
pub struct Block {
    header: Header,
    counters: Counters,
    gauges: [Gauges; 0],
}

/// Bytes a block with `entries` gauge entries (at least the most processes that can be alive
/// at once) takes.
pub const fn block_size(entries: usize) -> usize {
    std::mem::size_of::<Block>() + entries * std::mem::size_of::<Gauges>()
}

impl Block {
    fn entries(&self) -> &[Gauges] {
        // SAFETY: a block is made by `init_block` with `header.entries` entries after it, in
        // memory that stays mapped while `self` is borrowed.
        unsafe { std::slice::from_raw_parts(self.gauges.as_ptr(), self.header.entries as usize) }
    }
}

/// Lays out an empty block with `entries` gauge entries.
///
/// # Safety
/// `block` points at `block_size(entries)` writable bytes, aligned for `u64`, that no process
/// counts into yet.
pub unsafe fn init_block(block: *mut u8, entries: usize) {
    let size = block_size(entries);
    // SAFETY: per the function contract; all-zero is a valid value of every field but the
    // header, which is written next.
    unsafe {
        std::ptr::write_bytes(block, 0, size);
        (*block.cast::<Block>()).header = Header {
            magic: MAGIC,
            version: VERSION,
            entries: u32::try_from(entries).unwrap_or(u32::MAX),
            size: size as u64,
        };
    }
}

/// Whether `block` is a block of this layout with `entries` entries, which this code may reuse.
///
/// # Safety
/// `block` points at readable memory of at least `size_of::<u64>() * 3` bytes, aligned for `u64`
/// (the header's size in every layout, old blocks without a header included).
pub unsafe fn is_compatible(block: *const u8, entries: usize) -> bool {
    // SAFETY: per the function contract.
    let header = unsafe { &*block.cast::<Header>() };
    header.magic == MAGIC
        && header.version == VERSION
        && header.entries as usize == entries
        && header.size == block_size(entries) as u64
}

/// The block this process counts into, and its own gauges there.
static BLOCK: AtomicPtr<Block> = AtomicPtr::new(std::ptr::null_mut());
static MINE: AtomicPtr<Gauges> = AtomicPtr::new(std::ptr::null_mut());

/// Makes this process count into `block`: its gauges go to entry `slot` (a process slot the
/// server assigns, as nginx's) or, without one, to an entry claimed for this process's pid.
/// Errors when no entry is free (then only the counters count).
///
/// # Safety
/// `block` was laid out by `init_block` (or checked with `is_compatible`) and stays mapped for
/// the rest of the process's life.
pub unsafe fn attach(block: *mut u8, slot: Option<usize>) -> Result<(), String> {
    let block = block.cast::<Block>();
    BLOCK.store(block, Relaxed);
    MINE.store(std::ptr::null_mut(), Relaxed);
    // SAFETY: per the function contract.
    let entries = unsafe { (*block).entries() };
    // SAFETY: getpid has no preconditions.
    let pid = i64::from(unsafe { libc::getpid() });
    let entry = match slot {
        Some(i) => {
            let entry = entries.get(i).ok_or_else(|| {
                format!(
                    "process slot {i} is beyond the {} gauge entries",
                    entries.len()
                )
            })?;
            entry.owner.store(-1, Relaxed);
            Some(entry)
        }
        None => claim(entries, pid, alive),
    };
    let Some(entry) = entry else {
        return Err(format!(
            "all {} gauge entries are taken by live processes",
            entries.len()
        ));
    };
    for gauge in [
        &entry.in_flight,
        &entry.queued,
        &entry.threads_busy,
        &entry.lost_slots,
        &entry.pool_threads,
        &entry.asgi_tasks,
        &entry.websockets,
    ] {
        gauge.store(0, Relaxed);
    }
    entry.owner.store(pid, Relaxed);
    MINE.store((entry as *const Gauges).cast_mut(), Relaxed);
    Ok(())
}

/// Takes (and marks as being reset) an entry that is free, left by a dead process, or left by an
/// earlier process with this pid.
fn claim(entries: &[Gauges], pid: i64, alive: fn(i64) -> bool) -> Option<&Gauges> {
    entries.iter().find(|entry| {
        let owner = entry.owner.load(Relaxed);
        let reusable = owner == 0 || owner == pid || (owner > 0 && !alive(owner));
        reusable
            && entry
                .owner
                .compare_exchange(owner, -1, Relaxed, Relaxed)
                .is_ok()
    })
}

/// Whether process `pid` exists (one of another user's counts: it was a server process too).
fn alive(pid: i64) -> bool {
    libc::pid_t::try_from(pid).is_ok_and(crate::process_alive::exists)
}

fn counters() -> Option<&'static Counters> {
    // SAFETY: set by `attach` to a block that stays mapped for the process's life.
    unsafe { BLOCK.load(Relaxed).as_ref().map(|b| &b.counters) }
}

fn mine() -> Option<&'static Gauges> {
    // SAFETY: as for `counters`.
    unsafe { MINE.load(Relaxed).as_ref() }
}

/// A request was queued for a thread that runs Python.
pub fn posted() {
    if let Some(g) = mine() {
        g.in_flight.fetch_add(1, Relaxed);
        g.queued.fetch_add(1, Relaxed);
    }
}

/// A request counted by `posted` that its queue refused after all.
pub fn unposted() {
    if let Some(g) = mine() {
        g.in_flight.fetch_sub(1, Relaxed);
        g.queued.fetch_sub(1, Relaxed);
    }
}

/// A thread took a queued request (any thread).
pub fn thread_started() {
    if let Some(g) = mine() {
        g.queued.fetch_sub(1, Relaxed);
        g.threads_busy.fetch_add(1, Relaxed);
    }
}

/// The ASGI event loop started a queued request's app: its task runs.
pub fn loop_started() {
    if let Some(g) = mine() {
        g.queued.fetch_sub(1, Relaxed);
        g.asgi_tasks.fetch_add(1, Relaxed);
    }
}

/// A started ASGI task ended; `after_timeout` when its request's deadline had passed (its slot
/// was counted lost until now).
pub fn loop_task_done(after_timeout: bool) {
    if let Some(g) = mine() {
        g.asgi_tasks.fetch_sub(1, Relaxed);
        if after_timeout {
            g.lost_slots.fetch_sub(1, Relaxed);
        }
    }
}

/// An ASGI request's deadline passed; `lost` when its task still runs (until
/// [`loop_task_done`]), false when it ended meanwhile or never started.
pub fn asgi_timed_out(lost: bool) {
    if let (true, Some(g)) = (lost, mine()) {
        g.lost_slots.fetch_add(1, Relaxed);
    }
    if let Some(c) = counters() {
        c.timeouts.fetch_add(1, Relaxed);
    }
}

/// An ASGI WebSocket connection began (1) or ended (-1).
pub fn websocket(delta: i64) {
    if let Some(g) = mine() {
        g.websockets.fetch_add(delta, Relaxed);
    }
}

/// A request is run by the thread that received it, with no queue in between (Apache).
pub fn started_in_place() {
    if let Some(g) = mine() {
        g.in_flight.fetch_add(1, Relaxed);
        g.threads_busy.fetch_add(1, Relaxed);
    }
}

/// The thread is done with the request's Python part, which waited `gil_wait` for the GIL first.
pub fn thread_finished(gil_wait: Duration) {
    if let Some(g) = mine() {
        g.threads_busy.fetch_sub(1, Relaxed);
    }
    if let Some(c) = counters() {
        c.gil_wait_us
            .fetch_add(gil_wait.as_micros() as u64, Relaxed);
    }
}

/// The request came back from Python after `duration`, answered with `status`; one that
/// `timed_out` was counted as answered at its deadline ([`timed_out`]).
pub fn finished(status: u16, duration: Duration, timed_out: bool, client_gone: bool) {
    if let Some(g) = mine() {
        g.in_flight.fetch_sub(1, Relaxed);
        if timed_out {
            g.lost_slots.fetch_sub(1, Relaxed);
        }
    }
    if timed_out {
        return;
    }
    answered(status, duration, client_gone);
}

/// A response (`status`, after `duration`) in the counters and the duration histogram.
fn answered(status: u16, duration: Duration, client_gone: bool) {
    let Some(c) = counters() else { return };
    if client_gone {
        c.client_gone.fetch_add(1, Relaxed);
    }
    let class = (status / 100).clamp(1, 5) as usize - 1;
    c.responses[class].fetch_add(1, Relaxed);
    let secs = duration.as_secs_f64();
    for (bucket, &bound) in c.duration_buckets.iter().zip(BUCKETS.iter()) {
        if secs <= bound {
            bucket.fetch_add(1, Relaxed);
        }
    }
    c.duration_sum_us
        .fetch_add(duration.as_micros() as u64, Relaxed);
    c.duration_count.fetch_add(1, Relaxed);
}

/// The request came back from Python after `duration` with `outcome` (None: the server's own
/// failure), or was answered 504 by its timeout.
pub fn finished_outcome(outcome: Option<&Outcome>, duration: Duration, timed_out: bool) {
    let (status, client_gone) = match outcome {
        _ if timed_out => (504, false),
        None => (500, false),
        Some(o) => match o.kind {
            OutcomeKind::Failed => (500, false),
            OutcomeKind::ClientGone => (499, true),
            _ => (status_of(o.head.as_ref(), 500), false),
        },
    };
    finished(status, duration, timed_out, client_gone);
}

/// A request's deadline passed while it was inside Python, `duration` after it began: its thread
/// is lost until it returns; the 504 (or the cut) that went out in its place is counted now, not
/// when the thread comes back (one stuck in C code never does).
pub fn timed_out(duration: Duration) {
    if let Some(g) = mine() {
        g.lost_slots.fetch_add(1, Relaxed);
    }
    if let Some(c) = counters() {
        c.timeouts.fetch_add(1, Relaxed);
    }
    answered(504, duration, false);
}

/// A queued request left the queue without running (it waited too long).
pub fn dequeued_unrun() {
    if let Some(g) = mine() {
        g.queued.fetch_sub(1, Relaxed);
    }
}

/// `delta` threads of the module's own pools started (or ended, negative).
pub fn pool_thread(delta: i64) {
    if let Some(g) = mine() {
        g.pool_threads.fetch_add(delta, Relaxed);
    }
}

/// A request was answered 503 because too many waited (any thread).
pub fn refused() {
    if let Some(c) = counters() {
        c.refused.fetch_add(1, Relaxed);
    }
}

/// This process stops taking requests to be replaced by a fresh one.
pub fn recycled() {
    if let Some(c) = counters() {
        c.recycles.fetch_add(1, Relaxed);
    }
}

/// The status a request was answered with, for counting.
pub fn status_of(head: Option<&ResponseHead>, fallback: u16) -> u16 {
    head.map_or(fallback, |h| h.status)
}

/// The `Content-Type` of the rendered text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus text of `block` (a block's address, once `init_block` laid it out, may be read
/// as a `&Block`).
pub fn render(block: &Block) -> String {
    render_block(block, alive)
}

fn render_block(block: &Block, alive: fn(i64) -> bool) -> String {
    let live: Vec<&Gauges> = block
        .entries()
        .iter()
        .filter(|g| {
            let owner = g.owner.load(Relaxed);
            owner > 0 && alive(owner)
        })
        .collect();
    let sum =
        |f: fn(&Gauges) -> &AtomicI64| live.iter().map(|g| f(g).load(Relaxed).max(0)).sum::<i64>();
    let c = &block.counters;
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "# HELP wsgi_responses_total Requests answered, by status class.\n# TYPE wsgi_responses_total counter\n"
    );
    for (i, n) in c.responses.iter().enumerate() {
        let _ = writeln!(
            out,
            "wsgi_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            n.load(Relaxed)
        );
    }
    let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}\n",
            v.max(0)
        );
    };
    let counter = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    };
    gauge(
        &mut out,
        "wsgi_requests_in_flight",
        "Requests handed to Python and not yet back.",
        sum(|g| &g.in_flight),
    );
    gauge(
        &mut out,
        "wsgi_requests_queued",
        "Requests waiting for a thread (WSGI) or for the event loop (ASGI) to start them.",
        sum(|g| &g.queued),
    );
    gauge(
        &mut out,
        "wsgi_pool_threads_busy",
        "Threads running a request.",
        sum(|g| &g.threads_busy),
    );
    gauge(
        &mut out,
        "wsgi_pool_threads",
        "Threads of the module's own pools (nginx's wsgi_max_threads), busy or idle.",
        sum(|g| &g.pool_threads),
    );
    gauge(
        &mut out,
        "wsgi_lost_slots",
        "Requests past their timeout that are still inside Python (stuck in C code, say; for ASGI, tasks not ended yet).",
        sum(|g| &g.lost_slots),
    );
    gauge(
        &mut out,
        "wsgi_asgi_tasks",
        "ASGI app tasks running on the event loops (a task may run on after its response).",
        sum(|g| &g.asgi_tasks),
    );
    gauge(
        &mut out,
        "wsgi_asgi_websockets",
        "ASGI WebSocket connections, in their handshake or open.",
        sum(|g| &g.websockets),
    );
    counter(
        &mut out,
        "wsgi_timeouts_total",
        "Requests answered 504 by their timeout.",
        c.timeouts.load(Relaxed) as f64,
    );
    counter(
        &mut out,
        "wsgi_client_gone_total",
        "Streamed responses whose client went away.",
        c.client_gone.load(Relaxed) as f64,
    );
    counter(
        &mut out,
        "wsgi_requests_refused_total",
        "Requests answered 503 because too many waited for a thread or the ASGI event loop (nginx's wsgi_max_queue, wsgi_queue_timeout).",
        c.refused.load(Relaxed) as f64,
    );
    counter(
        &mut out,
        "wsgi_worker_recycles_total",
        "Server processes recycled by their request count or memory limit.",
        c.recycles.load(Relaxed) as f64,
    );
    counter(
        &mut out,
        "wsgi_gil_wait_seconds_total",
        "Time requests waited for the GIL before their app could start.",
        c.gil_wait_us.load(Relaxed) as f64 / 1e6,
    );
    let name = "wsgi_request_duration_seconds";
    let _ = write!(
        out,
        "# HELP {name} Time from handing a request to Python to its return.\n# TYPE {name} histogram\n"
    );
    for (bucket, bound) in c.duration_buckets.iter().zip(BUCKETS.iter()) {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{bound}\"}} {}",
            bucket.load(Relaxed)
        );
    }
    let count = c.duration_count.load(Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "{name}_sum {}",
        c.duration_sum_us.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {count}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block in process memory, aligned as shared memory would be.
    fn block(entries: usize) -> Vec<u64> {
        let mut mem = vec![0u64; block_size(entries).div_ceil(8)];
        // SAFETY: the vector has block_size(entries) bytes, aligned for u64.
        unsafe { init_block(mem.as_mut_ptr().cast(), entries) };
        mem
    }

    fn view(mem: &[u64]) -> &Block {
        // SAFETY: laid out by `block`.
        unsafe { &*mem.as_ptr().cast::<Block>() }
    }

    #[test]
    fn the_layout_is_checked_before_reuse() {
        let mem = block(8);
        let p = mem.as_ptr().cast::<u8>();
        // SAFETY: the block is live and large enough for every header read.
        unsafe {
            assert!(is_compatible(p, 8));
            assert!(!is_compatible(p, 9), "another entry count");
            let mut other = mem.clone();
            other[1] += 1; // the version field (and the entry count) share this word
            assert!(!is_compatible(other.as_ptr().cast(), 8));
            // An old block without a header: its first word is a response counter.
            let old = [5u64, 0, 0, 0];
            assert!(!is_compatible(old.as_ptr().cast(), 8));
        }
    }

    #[test]
    fn dead_processes_neither_count_nor_keep_their_entry() {
        let mem = block(3);
        let b = view(&mem);
        let entries = b.entries();
        let fake_alive = |pid: i64| pid != 101;
        // Two processes take entries; the second one dies with a request in flight.
        for pid in [100, 101] {
            let e = claim(entries, pid, fake_alive).unwrap();
            e.owner.store(pid, Relaxed);
            e.in_flight.store(1, Relaxed);
        }
        let text = render_block(b, fake_alive);
        assert!(text.contains("\nwsgi_requests_in_flight 1\n"), "{text}");
        // A new process reuses the dead one's entry before a free one, and starts from zero.
        let e = claim(entries, 102, fake_alive).unwrap();
        assert!(std::ptr::eq(e, &entries[1]));
        let e = claim(entries, 103, fake_alive).unwrap();
        assert!(std::ptr::eq(e, &entries[2]));
        assert!(
            claim(entries, 104, |_| true).is_none(),
            "every entry is taken"
        );
    }

    #[test]
    fn the_histogram_is_cumulative_and_gauges_never_go_negative() {
        let mem = block(1);
        let b = view(&mem);
        let before = BLOCK.swap((b as *const Block).cast_mut(), Relaxed);
        finished(200, Duration::from_millis(3), false, false);
        finished(404, Duration::from_millis(300), false, false);
        finished(500, Duration::from_secs(60), false, false);
        BLOCK.store(before, Relaxed);
        let entry = &b.entries()[0];
        entry.owner.store(1, Relaxed);
        entry.queued.store(-1, Relaxed);
        let text = render_block(b, |_| true);
        let bucket = |le: &str| {
            let key = format!("wsgi_request_duration_seconds_bucket{{le=\"{le}\"}} ");
            let at = text.find(&key).unwrap() + key.len();
            text[at..]
                .split('\n')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(
            (bucket("0.005"), bucket("0.5"), bucket("30"), bucket("+Inf")),
            (1, 2, 2, 3)
        );
        assert!(text.contains("wsgi_request_duration_seconds_count 3\n"));
        assert!(text.contains("wsgi_responses_total{class=\"4xx\"} 1\n"));
        assert!(text.contains("\nwsgi_requests_queued 0\n"), "{text}");
    }

    #[test]
    fn counters_render_as_prometheus_text() {
        let mem = block(1);
        let b = view(&mem);
        b.counters.responses[1].store(3, Relaxed);
        b.counters.duration_buckets[11].store(3, Relaxed);
        b.counters.duration_count.store(3, Relaxed);
        b.counters.duration_sum_us.store(1_500_000, Relaxed);
        let text = render_block(b, |_| true);
        for line in [
            "wsgi_responses_total{class=\"2xx\"} 3",
            "wsgi_request_duration_seconds_bucket{le=\"30\"} 3",
            "wsgi_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "wsgi_request_duration_seconds_sum 1.5",
            "# TYPE wsgi_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }
}
