//! A worker busy in Python, or with no room, leaves its new connections to the others
//! (`wsgi_busy_handoff`).
//!
//! nginx spreads connections by its event loops, and a worker's loop stays free while Python
//! runs on its threads: a worker whose one core is taken by a long request (a report, an API
//! schema built for seconds) went on accepting, and each new connection's requests waited for
//! the GIL behind it (a short request doing I/O waits for the GIL again at each return, a few
//! milliseconds each time), while another worker idled. So, while it has requests inside
//! Python, a worker looks every [`TICK_MS`] at how much of a core its threads wanted over the
//! last [`WINDOW`] looks (the time they ran, and the time they waited to run: on a machine short
//! of cores a spinning request gets a fraction of one, and is no less in the way; the scheduler
//! counts a wait when it ends, so one look's figure jumps about), and publishes it
//! (`sibling_workers.rs`). A worker that wanted [`BUSY`] or more, where another
//! accepting worker of its configuration used [`LEAVE_GAP`] less, takes its shared listening
//! sockets out of its event set (`shared_sockets.rs`); it takes them back once it is no longer
//! busy, or once no accepting worker is clearly less busy than it (which also brings it back
//! when the others leave, stop, or are busy too). Workers that are all busy all accept.
//!
//! A worker with no room (short of `worker_connections`, out of descriptors, a request waiting
//! for a thread) publishes [`FULL`]: a busy worker does not leave it its connections, and one
//! that left comes back. Short of connections or descriptors, it looks as it accepts, Python or
//! not, and leaves its own new connections to a worker with room, as nginx's accept mutex would
//! (without it nginx accepts past `worker_connections` and resets what it cannot keep).
//!
//! Connections already open would stay where they are: a few keep-alive clients (a load
//! balancer's connections, a benchmark's) that all landed on one worker kept it busy while the
//! others idled. So while it has left, a worker closes an HTTP/1 keep-alive connection after its
//! response (`Connection: close`, [`closes_a_connection`]): its client reconnects, to the other
//! workers. One at a time, and another only once the others' loads, over a whole window of
//! looks, still say that one of them is much less busy: they all moved to the idle worker
//! otherwise, which then gave them all back, a second later.
//!
//! A worker leaves only after taking its entry out of the table and finding another one still
//! in it (the recycling's order, `sibling_workers::withdraw`): of two leaving at once, at least
//! one sees the other gone and stays. Event-loop thread only.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use nginx_sys::{ngx_event_t, ngx_exiting, ngx_msec_t, ngx_quit, ngx_terminate, NGX_LOG_INFO};

use ngx::core::{CoreModuleMainConf, NgxCoreModule};

use crate::ffi::guard;
use crate::ffi::loop_cell::LoopCell;
use crate::ffi::timer::WorkerTimer;
use crate::shared_sockets::Why;

/// How often a worker with requests inside Python looks at how busy it is.
const TICK_MS: ngx_msec_t = 100;
/// The share of a core (thousandths) from which a worker is busy.
const BUSY: u32 = 750;
/// How much less busy another accepting worker must be for a busy one to leave it its new
/// connections.
const LEAVE_GAP: u32 = 500;
/// A worker that left comes back once no accepting one is this much less busy than it (or it
/// is no longer busy): between the two gaps, it stays as it is.
const RETURN_GAP: u32 = 250;
/// Below this, a worker that left comes back.
const IDLE: u32 = 500;
/// The load of a worker that has no room for more (see [`full`]).
const FULL: u32 = 1_000_000;
/// The least time between a worker's leaving and its coming back, and the other way round
/// (but for coming back when no other worker accepts): a load near a threshold does not make it
/// switch at every look.
const SETTLE: Duration = Duration::from_secs(1);
/// When the worker last left or came back.
static SWITCHED: LoopCell<Option<Instant>> = LoopCell::new(None);
/// How many connections the worker had when nginx last ran out of descriptors accepting (until
/// it has a quarter fewer).
static DESCRIPTORS_RAN_OUT_AT: LoopCell<Option<usize>> = LoopCell::new(None);
/// nginx's back-off after running out of descriptors was under way at the last look.
static BACKING_OFF: LoopCell<bool> = LoopCell::new(false);
/// When the worker last came back after leaving.
static CAME_BACK: LoopCell<Option<Instant>> = LoopCell::new(None);
/// When an accept last made the worker look at its room.
static ACCEPT_LOOKED: LoopCell<Option<Instant>> = LoopCell::new(None);
/// The least time between two looks that accepts make.
const ACCEPT_LOOK_EVERY: Duration = Duration::from_millis(10);
/// At the last look, the worker had left and connections waited in the accept queue.
static UNACCEPTED: LoopCell<bool> = LoopCell::new(false);
/// What a leaving worker's entry says of its keep-alive connections.
const KEEP_ALIVE_TOO: &str =
    ", and its keep-alive connections, one at a time after a response, while it stays so";
/// When the worker, having left, last closed a keep-alive connection after its response.
static CLOSED_AT: LoopCell<Option<Instant>> = LoopCell::new(None);
/// The next response on a keep-alive connection closes it (see the module's doc).
static CLOSE_DUE: LoopCell<bool> = LoopCell::new(false);
/// The least time between two such closes: the looks a load is taken over, so that the worker
/// that took the last one shows it.
const CLOSE_EVERY: Duration = Duration::from_millis(TICK_MS as u64 * WINDOW as u64);
/// Keep-alive connections it closed so since it left.
static CLOSED: LoopCell<u32> = LoopCell::new(0);

static ENABLED: AtomicBool = AtomicBool::new(false);
static TICK: WorkerTimer = WorkerTimer::new();
/// How many looks the load is taken over: the samples kept, the oldest first.
const WINDOW: usize = 4;
/// A worker leaves only once its load covers this many looks (a burst of a tick is not busy).
const LEAVE_AFTER: usize = 2;
static SAMPLES: LoopCell<[Option<Sample>; WINDOW]> = LoopCell::new([None; WINDOW]);
/// Past this many threads, their wait to run is not read (a file per thread): the load is the
/// CPU time alone.
const MAX_THREADS_READ: usize = 64;

/// What the process's threads had used at an instant.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    /// CPU time, every thread's.
    cpu: Duration,
    /// CPU time and time spent runnable but waiting for a core, summed over the threads now
    /// alive (None: not read).
    wanted: Option<Duration>,
}

/// Turns the hand-off on for this worker (from `init_process`: `wsgi_busy_handoff`), where it
/// can hand anything off: other workers, no accept mutex, a shared TCP listening socket.
///
/// # Safety
/// Event-loop thread, after nginx's event module set the worker's listening sockets up.
pub(crate) unsafe fn configure(enabled: bool) {
    // SAFETY: per the function contract: nginx's own settings, read on the event loop.
    let useful = unsafe {
        nginx_sys::ngx_process as u32 == nginx_sys::NGX_PROCESS_WORKER
            && nginx_sys::ngx_use_accept_mutex == 0
            && NgxCoreModule::main_conf(&*nginx_sys::ngx_cycle)
                .is_some_and(|ccf| ccf.worker_processes > 1)
            && crate::shared_sockets::any()
    };
    ENABLED.store(enabled && useful, Relaxed);
}

/// A request went inside Python: the worker looks at its load while it has any.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn work_started() {
    if !ENABLED.load(Relaxed) {
        return;
    }
    // SAFETY: per the function contract; the timer is a static, cancelable (it does not hold
    // an exiting worker). Its first look takes the first sample: nothing is read here, on the
    // request's path.
    unsafe {
        crate::ffi::timer::keep_armed(TICK.event(), Some(tick), std::ptr::null_mut(), TICK_MS)
    };
}

/// nginx accepted from a listening socket (or tried to): a worker running short of connections or
/// descriptors looks at once, whether or not it has requests inside Python, so that it says it
/// has no room (a busy worker that left comes back) and, where another worker has room, leaves
/// its new connections to it, as nginx's accept mutex would, instead of accepting and dropping
/// them ("worker_connections are not enough") or running out of descriptors again.
///
/// # Safety
/// Event-loop thread.
pub(crate) unsafe fn after_accept() {
    // SAFETY: per the function contract.
    unsafe {
        if !ENABLED.load(Relaxed)
            || crate::shared_sockets::left().is_some()
            || ACCEPT_LOOKED
                .get()
                .is_some_and(|at| at.elapsed() < ACCEPT_LOOK_EVERY)
            || !short_of_connections()
        {
            return;
        }
        ACCEPT_LOOKED.set(Some(Instant::now()));
        look(true);
    }
}

/// The CPU time of the whole process (every thread's: Python's pool threads, the event loop).
fn process_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, ours.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Every thread's time running and waiting to run, from the scheduler's statistics (the first
/// two fields of each thread's `schedstat`, in nanoseconds).
fn time_wanted() -> Option<Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total: u64 = 0;
    for (n, task) in tasks.enumerate() {
        if n >= MAX_THREADS_READ {
            return None;
        }
        let mut path = task.ok()?.path();
        path.push("schedstat");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // A thread that ended meanwhile is skipped; any other failure (out of descriptors)
            // would leave a live thread out of this sample and count its whole life in the next.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                continue
            }
            Err(_) => return None,
        };
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let (Some(Ok(ran)), Some(Ok(waited))) = (fields.next(), fields.next()) else {
            return None;
        };
        total = total.saturating_add(ran).saturating_add(waited);
    }
    Some(Duration::from_nanos(total))
}

fn sample() -> Option<Sample> {
    Some(Sample {
        at: Instant::now(),
        cpu: process_cpu_time()?,
        wanted: time_wanted(),
    })
}

/// How much of a core the threads wanted between two samples, in thousandths: the time they
/// ran or waited to run where both samples have it (a thread that ended in between takes its
/// time with it: the CPU time, which keeps it, bounds the load from below), else the CPU time.
fn load_between(then: Sample, now: Sample) -> u32 {
    let wall = now.at.saturating_duration_since(then.at).as_micros().max(1);
    let share = |used: Duration| (used.as_micros() * 1000 / wall).min(u128::from(u32::MAX)) as u32;
    let cpu = share(now.cpu.saturating_sub(then.cpu));
    match (then.wanted, now.wanted) {
        (Some(a), Some(b)) => cpu.max(share(b.saturating_sub(a))),
        _ => cpu,
    }
}

/// What a worker does with its shared sockets, given its load, whether it left them, and the
/// least load of the other accepting workers (None: none accepts).
#[derive(Debug, PartialEq, Eq)]
enum Move {
    Leave,
    Return,
    Stay,
}

fn decide(load: u32, left: bool, least_other: Option<u32>) -> Move {
    match (left, least_other) {
        (true, None) => Move::Return,
        (true, Some(other)) if load < IDLE || other.saturating_add(RETURN_GAP) > load => {
            Move::Return
        }
        (false, Some(other)) if load >= BUSY && other.saturating_add(LEAVE_GAP) <= load => {
            Move::Leave
        }
        _ => Move::Stay,
    }
}

/// Whether the worker cannot take more connections or requests than it has: it is short of
/// connections, nginx holds its listening sockets back after running out of descriptors (or it
/// has about as many connections as it had then), or a request waited a whole look for a
/// thread. Published as [`FULL`], whatever its load: a busy worker does not leave it its new
/// connections (its CPU would say it is idle, its threads all blocked in I/O), and one that
/// left comes back.
///
/// # Safety
/// Event-loop thread.
unsafe fn full() -> bool {
    // SAFETY: per the function contract.
    unsafe {
        short_of_connections()
            || crate::dispatch::RunQueue::all()
                .iter()
                .any(|q| q.waited_longer_than(TICK_MS))
    }
}

/// Whether a request that waited a whole look waits in a pool that can add no thread.
///
/// # Safety
/// Event-loop thread.
unsafe fn waiting_without_a_thread_to_add() -> bool {
    crate::dispatch::RunQueue::all().iter().any(|q| {
        // SAFETY: per the function contract.
        unsafe { q.waited_longer_than(TICK_MS) && q.no_thread_to_add() }
    })
}

/// [`full`]'s look at the worker's connections and descriptors alone (cheap enough for every
/// accept).
///
/// # Safety
/// Event-loop thread.
unsafe fn short_of_connections() -> bool {
    // SAFETY: per the function contract: nginx's cycle, read on the event loop.
    unsafe {
        let cycle = nginx_sys::ngx_cycle;
        let in_use = (*cycle).connection_n - (*cycle).free_connection_n;
        if crate::shared_sockets::backing_off() {
            // Out of descriptors with this many connections (as the back-off began): about as
            // many is full again.
            if !BACKING_OFF.get() {
                BACKING_OFF.set(true);
                DESCRIPTORS_RAN_OUT_AT.set(Some(in_use));
            }
            return true;
        }
        BACKING_OFF.set(false);
        let near_the_last_run_out = match DESCRIPTORS_RAN_OUT_AT.get() {
            // Well below it, the descriptors that ran out (files, upstreams) may be back.
            Some(at) if in_use < at - at / 4 => {
                DESCRIPTORS_RAN_OUT_AT.set(None);
                false
            }
            Some(at) => in_use + at / 8 >= at,
            None => false,
        };
        (*cycle).free_connection_n < (*cycle).connection_n / 8 || near_the_last_run_out
    }
}

/// A load as the log says it.
fn percent(load: u32) -> String {
    if load >= FULL {
        "no room for more".to_string()
    } else {
        format!("{}% of a core", load / 10)
    }
}

unsafe extern "C" fn tick(_ev: *mut ngx_event_t) {
    guard("looking at the worker's load", (), || {
        // SAFETY: timers run on the event loop.
        unsafe { look(false) }
    })
}

/// `at_accept`: an accept found the worker short of room; its load is not sampled then (that
/// is the ticks' business, over their window), it is full.
///
/// # Safety
/// Event-loop thread.
unsafe fn look(at_accept: bool) {
    // SAFETY: per the function contract: nginx's flags and cycle, the loop's own cells and
    // timer.
    unsafe {
        if ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 || crate::exit_drain::ending() {
            SAMPLES.set([None; WINDOW]);
            return;
        }
        if crate::reload_handover::superseded() {
            // A reload's old worker, accepting until the newer ones are ready (its slot in the
            // table is theirs now): it takes its share, and looks no more.
            crate::shared_sockets::put_back(Why::Busy);
            SAMPLES.set([None; WINDOW]);
            return;
        }
        // Armed first: a look that fails does not leave the worker out for good.
        crate::ffi::timer::keep_armed(TICK.event(), Some(tick), std::ptr::null_mut(), TICK_MS);
        let (cpu, span) = if at_accept {
            (0, 0)
        } else {
            let mut samples = SAMPLES.get();
            let oldest = samples.iter().position(Option::is_some);
            let now = sample();
            let cpu = match (oldest.and_then(|i| samples[i]), now) {
                (Some(then), Some(now)) => load_between(then, now),
                _ => 0,
            };
            samples.rotate_left(1);
            samples[WINDOW - 1] = now;
            SAMPLES.set(samples);
            // Looks the load covers.
            (cpu, oldest.map_or(0, |i| WINDOW - i))
        };
        // A worker with no room has no room, however little it computes.
        let full = at_accept || full();
        let load = if full { FULL } else { cpu };
        crate::sibling_workers::publish_load(load);
        if span == 0 && !full {
            return;
        }
        let left = crate::shared_sockets::left() == Some(Why::Busy);
        let settled = SWITCHED.get().is_none_or(|at| at.elapsed() >= SETTLE);
        let other = crate::sibling_workers::least_load_of_others();
        // Connections wait in the accept queue at two looks in a row: whoever should take them
        // does not (stopped, hung, or short of descriptors without looking).
        let unaccepted = left && crate::shared_sockets::waiting_connections() > 0;
        let stuck = unaccepted && UNACCEPTED.get();
        UNACCEPTED.set(unaccepted);
        match decide(load, left, other) {
            // Without another worker that can take them, at once.
            Move::Return if settled || stuck || other.is_none_or(|o| o >= FULL) => {
                come_back(&format!("it wanted {}", percent(load)));
            }
            // A worker with no room leaves at once (but after coming back: the others had none,
            // or did not take what waited); a busy one once its load is settled.
            Move::Leave
                if (full && CAME_BACK.get().is_none_or(|at| at.elapsed() >= SETTLE)
                    || settled && span >= LEAVE_AFTER)
                    && crate::sibling_workers::listed() =>
            {
                // Out of the table first, then another one still in it (see the module's doc).
                crate::sibling_workers::withdraw();
                let other = crate::sibling_workers::least_load_of_others();
                if decide(load, false, other) == Move::Leave
                    && crate::shared_sockets::leave(Why::Busy)
                {
                    SWITCHED.set(Some(Instant::now()));
                    let other = percent(other.unwrap_or(0));
                    log(&if full {
                        // Said as it is: an admin chases the limit it names.
                        let short = if at_accept || short_of_connections() {
                            "it is short of worker_connections or of descriptors"
                        } else if waiting_without_a_thread_to_add() {
                            "its requests wait for a Python thread: wsgi_max_threads, or its \
                             wsgi_thread_pool's threads, all busy"
                        } else {
                            // The pool adds a thread for a request that blocks, not one to
                            // queue behind requests that compute: the limit is the GIL's.
                            "its requests wait their turn for Python, whose one GIL its \
                             running requests keep busy"
                        };
                        format!(
                            "wsgi: this worker has no room for more requests ({short}; another \
                             worker {other}): its new connections go to the other workers until \
                             it has{KEEP_ALIVE_TOO}"
                        )
                    } else {
                        format!(
                            "wsgi: this worker is busy in Python (it wanted {}, another worker \
                             {other}): its new connections go to the other workers until it is \
                             not{KEEP_ALIVE_TOO}",
                            percent(load)
                        )
                    });
                } else {
                    crate::sibling_workers::ready();
                }
            }
            Move::Leave | Move::Stay if stuck => {
                come_back("connections were waiting that no other worker took");
            }
            Move::Return | Move::Leave | Move::Stay => {}
        }
        let left = crate::shared_sockets::left() == Some(Why::Busy);
        CLOSE_DUE.set(
            left && decide(load, false, other) == Move::Leave
                && CLOSED_AT.get().is_none_or(|at| at.elapsed() >= CLOSE_EVERY),
        );
        if crate::inflight::outstanding() == 0 && !left && cpu < IDLE && !full {
            // Idle: nothing to look at until a request comes.
            crate::ffi::timer::disarm(TICK.event());
            SAMPLES.set([None; WINDOW]);
            crate::sibling_workers::publish_load(0);
        }
    }
}

/// The worker takes its share of new connections again, for `why`.
///
/// # Safety
/// Event-loop thread.
unsafe fn come_back(why: &str) {
    // SAFETY: per the function contract.
    let closed = unsafe {
        crate::shared_sockets::put_back(Why::Busy);
        crate::sibling_workers::ready();
        SWITCHED.set(Some(Instant::now()));
        CAME_BACK.set(Some(Instant::now()));
        UNACCEPTED.set(false);
        CLOSE_DUE.set(false);
        let closed = CLOSED.get();
        CLOSED.set(0);
        closed
    };
    let closed = match closed {
        0 => String::new(),
        n => format!(
            "; meanwhile it closed {n} keep-alive connection{} after a response, for its client \
             to reconnect to the other workers",
            if n == 1 { "" } else { "s" }
        ),
    };
    log(&format!(
        "wsgi: this worker takes new connections again ({why}){closed}"
    ));
}

/// Whether the response `r` (a main request's, over HTTP/1, on a keep-alive connection) closes
/// its connection, for its client to move to a less busy worker (see the module's doc).
///
/// # Safety
/// Event-loop thread; `r` is live.
pub(crate) unsafe fn closes_a_connection(r: &nginx_sys::ngx_http_request_t) -> bool {
    if crate::shared_sockets::left() != Some(Why::Busy)
        || r.http_version >= nginx_sys::NGX_HTTP_VERSION_20 as usize
    {
        return false;
    }
    // SAFETY: per the function contract.
    unsafe {
        if !CLOSE_DUE.get() {
            return false;
        }
        CLOSE_DUE.set(false);
        CLOSED_AT.set(Some(Instant::now()));
        CLOSED.set(CLOSED.get() + 1);
    }
    true
}

fn log(text: &str) {
    crate::ffi::log::cycle_log(NGX_LOG_INFO as usize, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_worker_leaves_only_to_a_clearly_less_busy_one() {
        assert_eq!(decide(1000, false, Some(0)), Move::Leave);
        assert_eq!(decide(1000, false, Some(500)), Move::Leave);
        assert_eq!(decide(1000, false, Some(501)), Move::Stay);
        assert_eq!(decide(749, false, Some(0)), Move::Stay);
        // Alone, or the others all out: it accepts.
        assert_eq!(decide(1000, false, None), Move::Stay);
    }

    #[test]
    fn a_worker_that_left_returns_when_idle_or_no_longer_clearly_busier() {
        assert_eq!(decide(1000, true, Some(0)), Move::Stay);
        assert_eq!(decide(1000, true, Some(740)), Move::Stay);
        assert_eq!(decide(1000, true, Some(760)), Move::Return);
        assert_eq!(decide(400, true, Some(0)), Move::Return);
        assert_eq!(decide(1000, true, None), Move::Return);
    }

    fn at(t: Instant, ms: u64, cpu: u64, wanted: Option<u64>) -> Sample {
        Sample {
            at: t + Duration::from_millis(ms),
            cpu: Duration::from_millis(cpu),
            wanted: wanted.map(Duration::from_millis),
        }
    }

    #[test]
    fn the_load_is_the_share_of_a_core_wanted() {
        let t = Instant::now();
        assert_eq!(load_between(at(t, 0, 50, None), at(t, 100, 140, None)), 900);
        // Two threads on two cores: more than one core's worth.
        assert_eq!(
            load_between(at(t, 0, 50, None), at(t, 100, 250, None)),
            2000
        );
        // A spinning thread that got a fifth of a core on a crowded machine wanted all of it.
        assert_eq!(
            load_between(at(t, 0, 0, Some(0)), at(t, 100, 20, Some(100))),
            1000
        );
        // A thread that ended took its times along: the CPU time bounds the load.
        assert_eq!(
            load_between(at(t, 0, 0, Some(500)), at(t, 100, 90, Some(100))),
            900
        );
    }
}
