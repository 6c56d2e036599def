//! `wsgi_status`: Prometheus text metrics of all the workers together, kept in a shared memory
//! zone (`wsgi_status`) that the workers update with atomic operations. The zone only exists
//! when some location has `wsgi_status`; without it, nothing is counted.

use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use nginx_sys::{ngx_int_t, ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t, NGX_ERROR, NGX_OK};
use ngx_wsgi::ResponseHead;

use crate::ffi::guard;

/// Upper bounds (seconds) of the request duration histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Gauges of one worker: a worker that dies takes its own with it (its successor in the same
/// process slot starts from zero), so they never drift.
#[repr(C)]
struct Gauges {
    in_flight: AtomicI64,
    queued: AtomicI64,
    threads_busy: AtomicI64,
    lost_slots: AtomicI64,
    /// Threads of the module's own pools, busy or idle.
    pool_threads: AtomicI64,
}

const SLOTS: usize = nginx_sys::NGX_MAX_PROCESSES as usize;

/// The counters, in shared memory.
#[repr(C)]
pub(crate) struct Metrics {
    /// Responses by status class: 1xx .. 5xx.
    responses: [AtomicU64; 5],
    /// By nginx process slot.
    gauges: [Gauges; SLOTS],
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_sum_us: AtomicU64,
    duration_count: AtomicU64,
    gil_wait_us: AtomicU64,
    timeouts: AtomicU64,
    client_gone: AtomicU64,
    recycles: AtomicU64,
    refused: AtomicU64,
}

/// Bytes of the `wsgi_status` zone: the counters and room for the slab allocator's own pages.
pub(crate) const ZONE_SIZE: usize =
    (std::mem::size_of::<Metrics>() + 64 * 1024).next_multiple_of(4096);

static METRICS: AtomicPtr<Metrics> = AtomicPtr::new(std::ptr::null_mut());
static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn get() -> Option<&'static Metrics> {
    // SAFETY: set once per worker to the zone's block, which lives as long as the process.
    unsafe { METRICS.load(Relaxed).as_ref() }
}

impl Metrics {
    fn mine(&self) -> &Gauges {
        &self.gauges[SLOT.load(Relaxed) % SLOTS]
    }
}

/// Makes this worker count into the zone, if there is one (from `init_process`).
pub(crate) fn attach(zone: *mut ngx_shm_zone_t) {
    if zone.is_null() {
        return;
    }
    // SAFETY: the zone's init callback ran in the master before the worker was forked; the
    // process slot is set before init_process.
    unsafe {
        SLOT.store(nginx_sys::ngx_process_slot.max(0) as usize, Relaxed);
        METRICS.store((*zone).data.cast(), Relaxed);
    }
    if let Some(m) = get() {
        let g = m.mine();
        for gauge in [
            &g.in_flight,
            &g.queued,
            &g.threads_busy,
            &g.lost_slots,
            &g.pool_threads,
        ] {
            gauge.store(0, Relaxed);
        }
    }
}

pub(crate) fn posted() {
    if let Some(m) = get() {
        m.mine().in_flight.fetch_add(1, Relaxed);
        m.mine().queued.fetch_add(1, Relaxed);
    }
}

/// A pool thread took the request (any thread).
pub(crate) fn thread_started() {
    if let Some(m) = get() {
        m.mine().queued.fetch_sub(1, Relaxed);
        m.mine().threads_busy.fetch_add(1, Relaxed);
    }
}

/// The pool thread is done with the request (any thread).
pub(crate) fn thread_finished(gil_wait: Duration) {
    if let Some(m) = get() {
        m.mine().threads_busy.fetch_sub(1, Relaxed);
        m.gil_wait_us
            .fetch_add(gil_wait.as_micros() as u64, Relaxed);
    }
}

/// The request came back from the pool after `duration`, answered with `status`.
pub(crate) fn finished(status: u16, duration: Duration, timed_out: bool, client_gone: bool) {
    let Some(m) = get() else { return };
    m.mine().in_flight.fetch_sub(1, Relaxed);
    if timed_out {
        m.mine().lost_slots.fetch_sub(1, Relaxed);
    }
    if client_gone {
        m.client_gone.fetch_add(1, Relaxed);
    }
    let class = (status / 100).clamp(1, 5) as usize - 1;
    m.responses[class].fetch_add(1, Relaxed);
    let secs = duration.as_secs_f64();
    for (bucket, &bound) in m.duration_buckets.iter().zip(BUCKETS.iter()) {
        if secs <= bound {
            bucket.fetch_add(1, Relaxed);
        }
    }
    m.duration_sum_us
        .fetch_add(duration.as_micros() as u64, Relaxed);
    m.duration_count.fetch_add(1, Relaxed);
}

/// A request's deadline passed while it was inside Python: its slot is lost until it returns.
pub(crate) fn timed_out() {
    if let Some(m) = get() {
        m.timeouts.fetch_add(1, Relaxed);
        m.mine().lost_slots.fetch_add(1, Relaxed);
    }
}

/// `delta` threads of the module's own pools started (or ended, negative).
pub(crate) fn pool_thread(delta: i64) {
    if let Some(m) = get() {
        m.mine().pool_threads.fetch_add(delta, Relaxed);
    }
}

/// A request was answered 503 because too many waited (any thread).
pub(crate) fn refused() {
    if let Some(m) = get() {
        m.refused.fetch_add(1, Relaxed);
    }
}

/// A queued request was taken out of the queue unanswered by the app (it waited too long).
pub(crate) fn dequeued_unrun() {
    if let Some(m) = get() {
        m.mine().queued.fetch_sub(1, Relaxed);
    }
}

pub(crate) fn recycled() {
    if let Some(m) = get() {
        m.recycles.fetch_add(1, Relaxed);
    }
}

/// The status a request was answered with, for counting.
pub(crate) fn status_of(head: Option<&ResponseHead>, fallback: u16) -> u16 {
    head.map_or(fallback, |h| h.status)
}

/// The Prometheus text of the counters.
pub(crate) fn render(m: &Metrics) -> String {
    let sum = |f: fn(&Gauges) -> &AtomicI64| {
        m.gauges
            .iter()
            .map(|g| f(g).load(Relaxed).max(0))
            .sum::<i64>()
    };
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    };
    metric(
        "wsgi_responses_total",
        "counter",
        "Requests answered, by status class.",
    );
    let mut text = String::new();
    for (i, c) in m.responses.iter().enumerate() {
        let _ = writeln!(
            text,
            "wsgi_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            c.load(Relaxed)
        );
    }
    out.push_str(&text);
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
        "Requests handed to the thread pools and not yet back.",
        sum(|g| &g.in_flight),
    );
    gauge(
        &mut out,
        "wsgi_requests_queued",
        "Requests waiting for a pool thread.",
        sum(|g| &g.queued),
    );
    gauge(
        &mut out,
        "wsgi_pool_threads_busy",
        "Pool threads running a request.",
        sum(|g| &g.threads_busy),
    );
    gauge(
        &mut out,
        "wsgi_pool_threads",
        "Threads of the module's own pools (wsgi_max_threads), busy or idle.",
        sum(|g| &g.pool_threads),
    );
    gauge(
        &mut out,
        "wsgi_lost_slots",
        "Requests past wsgi_read_timeout that are still inside Python (stuck in C code, say).",
        sum(|g| &g.lost_slots),
    );
    counter(
        &mut out,
        "wsgi_timeouts_total",
        "Requests answered 504 by wsgi_read_timeout.",
        m.timeouts.load(Relaxed) as f64,
    );
    counter(
        &mut out,
        "wsgi_client_gone_total",
        "Streamed responses whose client went away.",
        m.client_gone.load(Relaxed) as f64,
    );
    counter(
        &mut out,
        "wsgi_requests_refused_total",
        "Requests answered 503 because too many waited for a thread (wsgi_max_queue, wsgi_queue_timeout).",
        m.refused.load(Relaxed) as f64,
    );
    counter(
        &mut out,
        "wsgi_worker_recycles_total",
        "Workers recycled by wsgi_max_requests or wsgi_max_rss.",
        m.recycles.load(Relaxed) as f64,
    );
    counter(
        &mut out,
        "wsgi_gil_wait_seconds_total",
        "Time requests waited for the GIL before their app could start.",
        m.gil_wait_us.load(Relaxed) as f64 / 1e6,
    );
    let name = "wsgi_request_duration_seconds";
    let _ = write!(
        out,
        "# HELP {name} Time from handing a request to the pool to its return.\n# TYPE {name} histogram\n"
    );
    for (bucket, bound) in m.duration_buckets.iter().zip(BUCKETS.iter()) {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{bound}\"}} {}",
            bucket.load(Relaxed)
        );
    }
    let count = m.duration_count.load(Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "{name}_sum {}",
        m.duration_sum_us.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {count}");
    out
}

/// The zone's init callback (in the master, at each configuration load): the counters of the
/// previous cycle are kept.
pub(crate) unsafe extern "C" fn init_zone(
    zone: *mut ngx_shm_zone_t,
    old: *mut c_void,
) -> ngx_int_t {
    guard("the wsgi_status zone", NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx passes the zone; `old` is the previous cycle's block in the same memory.
        unsafe {
            if !old.is_null() {
                (*zone).data = old;
                return NGX_OK as ngx_int_t;
            }
            let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
            if (*zone).shm.exists != 0 {
                (*zone).data = (*pool).data;
                return NGX_OK as ngx_int_t;
            }
            let block = ngx_slab_alloc(pool, std::mem::size_of::<Metrics>());
            if block.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            // All-zero is a valid Metrics: every field is an atomic integer.
            std::ptr::write_bytes(block.cast::<u8>(), 0, std::mem::size_of::<Metrics>());
            (*pool).data = block;
            (*zone).data = block;
        }
        NGX_OK as ngx_int_t
    })
}

/// The counters of `zone`, if it has been initialised.
///
/// # Safety
/// `zone` is NULL or the live `wsgi_status` zone.
pub(crate) unsafe fn of_zone<'a>(zone: *mut ngx_shm_zone_t) -> Option<&'a Metrics> {
    // SAFETY: per the function contract; the zone's data is its Metrics block once initialised.
    unsafe {
        if zone.is_null() {
            return None;
        }
        ((*zone).data as *const Metrics).as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed() -> Box<Metrics> {
        // SAFETY: all-zero is a valid Metrics: every field is an atomic integer.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn render_sums_the_gauges_of_every_worker_and_never_goes_negative() {
        let m = zeroed();
        m.gauges[0].in_flight.store(2, Relaxed);
        m.gauges[3].in_flight.store(5, Relaxed);
        m.gauges[1].queued.store(-1, Relaxed);
        m.responses[1].store(7, Relaxed);
        m.responses[4].store(1, Relaxed);
        let text = render(&m);
        assert!(text.contains("wsgi_requests_in_flight 7\n"), "{text}");
        assert!(text.contains("wsgi_requests_queued 0\n"), "{text}");
        assert!(text.contains("wsgi_responses_total{class=\"2xx\"} 7\n"));
        assert!(text.contains("wsgi_responses_total{class=\"5xx\"} 1\n"));
        assert!(text.contains("# TYPE wsgi_request_duration_seconds histogram\n"));
    }

    #[test]
    fn the_histogram_is_cumulative() {
        let m = zeroed();
        METRICS.store(&*m as *const Metrics as *mut Metrics, Relaxed);
        finished(200, Duration::from_millis(3), false, false);
        finished(404, Duration::from_millis(300), false, false);
        finished(500, Duration::from_secs(60), false, false);
        METRICS.store(std::ptr::null_mut(), Relaxed);
        let text = render(&m);
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
        assert_eq!(bucket("0.005"), 1);
        assert_eq!(bucket("0.5"), 2);
        assert_eq!(bucket("30"), 2);
        assert_eq!(bucket("+Inf"), 3);
        assert!(text.contains("wsgi_request_duration_seconds_count 3\n"));
        assert!(text.contains("wsgi_responses_total{class=\"4xx\"} 1\n"));
    }
}
