//! When a server process is due to be replaced by a fresh one: after a number of requests (plus a
//! random jitter drawn per process, so that processes started together do not all go at once),
//! or once its resident memory outgrows a limit. Requests may finish on any thread; the process
//! is found due exactly once. What replacing it means is the adapter's business.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// How often, at most, the process's size is read.
const RSS_CHECK_MS: u64 = 1000;

/// One process's limits and counts.
#[derive(Debug, Default)]
pub struct Limits {
    /// Requests this process may serve (0: no limit).
    limit: AtomicU64,
    served: AtomicU64,
    /// In bytes (0: no limit).
    max_rss: AtomicUsize,
    /// Milliseconds of the monotonic clock at the last size check.
    rss_checked_ms: AtomicU64,
    due: AtomicBool,
}

/// Why the process is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Requests(u64),
    /// Resident bytes and the limit.
    Memory(usize, usize),
}

impl Limits {
    pub const fn new() -> Limits {
        Limits {
            limit: AtomicU64::new(0),
            served: AtomicU64::new(0),
            max_rss: AtomicUsize::new(0),
            rss_checked_ms: AtomicU64::new(0),
            due: AtomicBool::new(false),
        }
    }

    /// Sets the limits (0: none) for this process, drawing its jitter (0..=jitter) now.
    pub fn configure(&self, max_requests: u64, jitter: u64, max_rss: usize) {
        let extra = if jitter > 0 {
            random() % (jitter.saturating_add(1)).max(1)
        } else {
            0
        };
        self.limit.store(
            if max_requests > 0 {
                max_requests.saturating_add(extra)
            } else {
                0
            },
            Relaxed,
        );
        self.max_rss.store(max_rss, Relaxed);
        self.served.store(0, Relaxed);
        self.due.store(false, Relaxed);
    }

    /// The request limit drawn for this process (0: none).
    pub fn request_limit(&self) -> u64 {
        self.limit.load(Relaxed)
    }

    /// A request finished (any thread). Returns why the process is due, the first time it is.
    pub fn request_done(&self) -> Option<Due> {
        let served = self.served.fetch_add(1, Relaxed) + 1;
        let limit = self.limit.load(Relaxed);
        if limit > 0 && served >= limit {
            return self.become_due(Due::Requests(served));
        }
        let max_rss = self.max_rss.load(Relaxed);
        if max_rss == 0 {
            return None;
        }
        let now = crate::monotonic::ms();
        let last = self.rss_checked_ms.load(Relaxed);
        // One thread reads the size per interval; the others go on at once.
        if (last != 0 && now.saturating_sub(last) < RSS_CHECK_MS)
            || self
                .rss_checked_ms
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_err()
        {
            return None;
        }
        match resident_bytes() {
            Some(rss) if rss > max_rss => self.become_due(Due::Memory(rss, max_rss)),
            _ => None,
        }
    }

    fn become_due(&self, why: Due) -> Option<Due> {
        (!self.due.swap(true, Relaxed)).then_some(why)
    }
}

/// The limit on resident memory as both servers write it (`wsgi_max_rss`, `NgxWsgiMaxRSS`):
/// bytes, or with a `k`, `m` or `g` unit in either case (nginx's own size parser stops at `m`).
pub fn parse_memory_size(text: &str) -> Option<usize> {
    let (digits, shift) = match text.as_bytes().last()?.to_ascii_lowercase() {
        b'k' => (&text[..text.len() - 1], 10),
        b'm' => (&text[..text.len() - 1], 20),
        b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// The calling process's resident set size.
pub fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: plain sysconf call.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * usize::try_from(page).ok()?)
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No entropy source: the pid still spreads processes started together.
        // SAFETY: getpid has no preconditions.
        return u64::from(unsafe { libc::getpid() }.unsigned_abs());
    }
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_take_k_m_and_g() {
        assert_eq!(parse_memory_size("4096"), Some(4096));
        assert_eq!(parse_memory_size("512k"), Some(512 << 10));
        assert_eq!(parse_memory_size("48M"), Some(48 << 20));
        assert_eq!(parse_memory_size("2g"), Some(2 << 30));
        for bad in [
            "",
            "g",
            "-1m",
            "+2g",
            "1.5g",
            "2t",
            "2 g",
            "99999999999999999999g",
        ] {
            assert_eq!(parse_memory_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn due_once_after_the_limit_and_its_jitter() {
        let limits = Limits::new();
        limits.configure(10, 5, 0);
        let limit = limits.request_limit();
        assert!((10..=15).contains(&limit), "{limit}");
        for _ in 1..limit {
            assert_eq!(limits.request_done(), None);
        }
        assert_eq!(limits.request_done(), Some(Due::Requests(limit)));
        assert_eq!(limits.request_done(), None, "due only once");
    }

    #[test]
    fn due_when_the_process_outgrows_its_memory_limit() {
        let limits = Limits::new();
        limits.configure(0, 0, 1);
        assert!(matches!(limits.request_done(), Some(Due::Memory(rss, 1)) if rss > 1));
        let roomy = Limits::new();
        roomy.configure(0, 0, usize::MAX);
        assert_eq!(roomy.request_done(), None);
    }
}
