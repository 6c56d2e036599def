//! Reloads without a pause (`wsgi_reload_handover on`). At `nginx -s reload` the master forks
//! the new workers and, 100 ms later, tells the old ones to quit: they close their listening
//! sockets at once. The new workers import the apps before they accept anything (a Django or
//! Gradio app: seconds), and new connections wait in the kernel's backlog meanwhile. Here an old
//! worker told to quit goes on accepting, with the old configuration and code, while a newer
//! configuration's workers are still starting, until they are all ready (or a bound passes),
//! then quits as nginx asked. Off, new requests wait for the new workers, as nginx's own do.
//!
//! The generations meet in one word of memory the master maps, shared, before its first fork: the
//! newest configuration the master took, how many workers it starts with apps to import (none when
//! it has no app or the hand-over is off), and how many of them are ready. A worker knows its own
//! generation (`generation.rs`). A quit with no newer generation starting (`nginx -s quit`) is
//! taken at once. The master's quit comes through its channel (a signal only when the channel
//! fails: that one is taken at once, as before).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use nginx_sys::{ngx_cycle_t, ngx_event_t, ngx_msec_t, NGX_LOG_NOTICE};

use crate::ffi::guard;
use crate::ffi::timer::WorkerTimer;

/// The shared words: a configuration's [`Starts`]; then until when (the system's monotonic
/// clock, in ms) old workers are known to go on accepting while they wait for the newer ones:
/// each waiting one moves it on at each look, so it lapses by itself when they stop, crash or
/// exit any other way.
static SHARED: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// How far a waiting old worker's look moves the second word on: a few of its looks.
const ACCEPTING_FOR_MS: u64 = 250;
/// At a reload the old workers are told to quit 100 ms after the new ones are forked, and only
/// then begin to wait: until this long after the configuration was taken, they count as
/// accepting.
const FIRST_WAIT_MS: u64 = 400;
/// This worker's apps were all loaded: when not, it accepts nothing (`unloaded_aside.rs`) and a
/// newer reload does not wait for it.
static WHOLE: AtomicBool = AtomicBool::new(true);
/// nginx's clock when the worker, told to quit, began to wait for the newer workers (0: it
/// has not).
static WAITING_SINCE: AtomicUsize = AtomicUsize::new(0);
/// The wait is over: the worker's quit is nginx's again.
static QUITTING: AtomicBool = AtomicBool::new(false);
/// How long it waits for them at most, in ms.
static BOUND_MS: AtomicU64 = AtomicU64::new(0);
static CHECK: WorkerTimer = WorkerTimer::new();
/// How often a waiting worker looks at the newer workers.
const CHECK_MS: ngx_msec_t = 20;

/// The first shared word: a configuration's generation and how its workers' starts went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Starts {
    generation: u32,
    /// Workers of it that import apps.
    expected: u16,
    /// Those that loaded them all.
    ready: u16,
    /// Those that could not (`unloaded_aside.rs`).
    failed: u16,
}

/// Bits of the word's counts: nginx starts at most 1024 processes (`NGX_MAX_PROCESSES`).
const EXPECTED_BITS: u32 = 11;
const READY_BITS: u32 = 11;
const FAILED_BITS: u32 = 32 - EXPECTED_BITS - READY_BITS;

fn field_max(bits: u32) -> u16 {
    ((1u32 << bits) - 1) as u16
}

impl Starts {
    fn unpack(word: u64) -> Self {
        let field = |shift: u32, bits: u32| ((word >> shift) as u16) & field_max(bits);
        Starts {
            generation: (word >> 32) as u32,
            expected: field(READY_BITS + FAILED_BITS, EXPECTED_BITS),
            ready: field(FAILED_BITS, READY_BITS),
            failed: field(0, FAILED_BITS),
        }
    }

    fn pack(self) -> u64 {
        let field = |value: u16, bits: u32| u64::from(value.min(field_max(bits)));
        (u64::from(self.generation) << 32)
            | (field(self.expected, EXPECTED_BITS) << (READY_BITS + FAILED_BITS))
            | (field(self.ready, READY_BITS) << FAILED_BITS)
            | field(self.failed, FAILED_BITS)
    }

    /// Some of its workers are still importing their apps: neither loaded nor failed.
    fn still_starting(self) -> bool {
        u32::from(self.ready) + u32::from(self.failed) < u32::from(self.expected)
    }
}

fn shared() -> Option<&'static AtomicU64> {
    // SAFETY: the pointer is null or the master's shared mapping, never unmapped.
    unsafe { SHARED.load(Ordering::Acquire).as_ref() }
}

/// The second shared word: until when old workers accept while they wait.
fn old_accepting_until() -> Option<&'static AtomicU64> {
    // SAFETY: the pointer is null or the master's shared mapping of two words, never unmapped.
    unsafe {
        SHARED
            .load(Ordering::Acquire)
            .as_ref()
            .map(|w| &*(w as *const AtomicU64).add(1))
    }
}

/// Says that old workers accept for `ms` more (never moving the word back).
fn accepting_for(ms: u64) {
    if let Some(word) = old_accepting_until() {
        word.fetch_max(ngx_wsgi::monotonic::ms() + ms, Ordering::AcqRel);
    }
}

/// Until when (the monotonic clock, in ms) old workers of a reload were known to accept; 0 when
/// none ever did.
pub(crate) fn old_workers_accepted_until() -> u64 {
    old_accepting_until().map_or(0, |w| w.load(Ordering::Acquire))
}

/// Whether old workers of a reload go on accepting while they wait for this generation's.
pub(crate) fn old_workers_accept() -> bool {
    old_accepting_until().is_some_and(|w| w.load(Ordering::Acquire) > ngx_wsgi::monotonic::ms())
}

/// The newest configuration's starts, as the master and its workers left them.
fn starts() -> Option<Starts> {
    shared().map(|word| Starts::unpack(word.load(Ordering::Acquire)))
}

/// Whether this worker belongs to a reload's newer generation whose old workers wait for it
/// (`wsgi_reload_handover on`): some of its workers are still importing their apps.
pub(crate) fn awaited_by_old_workers() -> bool {
    starts().is_some_and(|s| {
        s.generation == crate::generation::current() && s.generation > 1 && s.still_starting()
    })
}

/// Changes the shared word with `change` (None: leave it), retrying on a race.
fn update(change: impl Fn(Starts) -> Option<Starts>) {
    let Some(word) = shared() else {
        return;
    };
    let mut current = word.load(Ordering::Acquire);
    loop {
        let Some(new) = change(Starts::unpack(current)) else {
            return;
        };
        match word.compare_exchange_weak(current, new.pack(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

/// The master took a configuration (its `init_module`, once the configuration is whole: also
/// in `nginx -t`, harmlessly): its next workers are of a new generation, `expected` of them
/// import apps (0: none does, and no old worker waits for them). The shared word is made once,
/// before any fork.
pub(crate) fn configuration_taken(expected: usize) {
    if SHARED.load(Ordering::Acquire).is_null() {
        // SAFETY: a fresh anonymous shared mapping; nothing else refers to it yet.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * size_of::<AtomicU64>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map != libc::MAP_FAILED {
            SHARED.store(map.cast(), Ordering::Release);
        }
    }
    let generation = crate::generation::next();
    let expected = u16::try_from(expected).unwrap_or(u16::MAX);
    update(|_| {
        Some(Starts {
            generation,
            expected,
            ready: 0,
            failed: 0,
        })
    });
    if expected > 0 {
        accepting_for(FIRST_WAIT_MS);
    }
}

/// A worker is ready to accept (`whole`: its apps imported, their lifespan started; else it
/// serves without some, counted as failed: once none of its generation is still importing, the
/// old workers quit, since what it failed on may be theirs, as a lock; it loads them again as
/// they exit); `bound` is how long it would itself wait, once old, for newer workers. From the
/// loop's first turn the master's commands pass through [`on_channel`].
///
/// # Safety
/// Event-loop thread, once, from `init_process`; `cycle` is live.
pub(crate) unsafe fn ready(cycle: *mut ngx_cycle_t, bound: std::time::Duration, whole: bool) {
    let mine = crate::generation::current();
    WHOLE.store(whole, Ordering::Release);
    update(|s| {
        (s.generation == mine).then(|| Starts {
            ready: s.ready.saturating_add(u16::from(whole)),
            failed: s.failed.saturating_add(u16::from(!whole)),
            ..s
        })
    });
    BOUND_MS.store(bound.as_millis() as u64, Ordering::Release);
    // SAFETY: a plain read of nginx's process role: only a master's worker has its channel.
    if unsafe { nginx_sys::ngx_process } as u32 != nginx_sys::NGX_PROCESS_WORKER {
        return;
    }
    // nginx registers the master's channel after every module's `init_process`: it is found
    // at the loop's first turn.
    // SAFETY: on the event loop; the timer is a static.
    unsafe {
        crate::ffi::timer::keep_armed(CHECK.event(), Some(take_the_channel), cycle.cast(), 1)
    };
}

/// The loop's first turn: the master's channel's read handler becomes [`on_channel`].
unsafe extern "C" fn take_the_channel(ev: *mut ngx_event_t) {
    guard("the reload's hand-over", (), || {
        // SAFETY: the event's data is the live cycle (see `ready`); the channel is one of its
        // connections, whose read handler nginx set before its cycle's first turn.
        unsafe {
            let cycle = (*ev).data.cast::<ngx_cycle_t>();
            let fd = nginx_sys::ngx_channel;
            if fd < 0 {
                return;
            }
            let connections = (*cycle).connections;
            for i in 0..(*cycle).connection_n {
                let c = connections.add(i);
                if (*c).fd == fd && !(*c).read.is_null() && (*(*c).read).channel() != 0 {
                    if let Some(handler) = (*(*c).read).handler {
                        CHANNEL_HANDLER.store(handler as *const () as usize, Ordering::Release);
                        (*(*c).read).handler = Some(on_channel);
                    }
                    // What the master sent before this turn (a newer worker's channel).
                    crate::exec_child::close_channels_on_exec();
                    return;
                }
            }
        }
    })
}

/// nginx's handler of the master's channel, which [`on_channel`] runs first.
static CHANNEL_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Whether the master took a newer configuration than this worker's: its workers have this
/// one's slots, and this one is on its way out.
pub(crate) fn superseded() -> bool {
    starts().is_some_and(|s| s.generation > crate::generation::current())
}

/// Whether a newer generation's workers are starting: some still import their apps.
fn newer_workers_starting() -> bool {
    starts().is_some_and(|s| s.generation > crate::generation::current() && s.still_starting())
}

/// A command from the master (nginx's own handler reads and does it): a quit, which nginx's
/// handler notes in `ngx_quit` for the worker's cycle to act on after this event, is held back
/// while a reload's newer workers are still starting.
unsafe extern "C" fn on_channel(ev: *mut ngx_event_t) {
    let handler = CHANNEL_HANDLER.load(Ordering::Acquire);
    if handler == 0 {
        return;
    }
    // SAFETY: nginx's own flag, on the event loop. Only a quit this command brings is held
    // back, not one set before it (a recycling's, or the end of this module's own wait).
    let quit_before = unsafe { nginx_sys::ngx_quit != 0 };
    guard("a worker's channel", (), || {
        // SAFETY: the value is nginx's channel handler, saved by `ready`, called as nginx
        // would have called it; the event (and its connection, which it may close) is not used
        // after.
        unsafe {
            let handler: unsafe extern "C" fn(*mut ngx_event_t) = std::mem::transmute(handler);
            handler(ev);
        }
    });
    // SAFETY: on the event loop, after nginx's channel handler (it may have opened a channel).
    guard("a worker's channel", (), || unsafe {
        crate::exec_child::close_channels_on_exec()
    });
    guard("the reload's hand-over", (), || {
        // SAFETY: nginx's own flags, on the event loop.
        let quit_now = unsafe { nginx_sys::ngx_quit != 0 && nginx_sys::ngx_exiting == 0 };
        if !quit_now || quit_before || QUITTING.load(Ordering::Acquire) {
            return;
        }
        // One that could not load its apps accepts nothing meanwhile: nothing to wait for.
        if !newer_workers_starting() || !WHOLE.load(Ordering::Acquire) {
            if newer_generation() {
                // SAFETY: as above: the worker's cycle has not seen the flag yet.
                unsafe { nginx_sys::ngx_quit = 0 };
                drain_then_quit();
            }
            return;
        }
        // SAFETY: as above: the worker's cycle has not seen the flag yet.
        unsafe { nginx_sys::ngx_quit = 0 };
        if WAITING_SINCE.load(Ordering::Acquire) != 0 {
            // Told again while it waits (`nginx -s quit` during the reload): the wait's end quits.
            return;
        }
        // SAFETY: plain read of nginx's cached clock on the event loop.
        WAITING_SINCE.store(
            unsafe { nginx_sys::ngx_current_msec }.max(1),
            Ordering::Release,
        );
        accepting_for(ACCEPTING_FOR_MS);
        crate::ffi::log::cycle_log(
            NGX_LOG_NOTICE as usize,
            &format!(
                "wsgi: told to quit while the reload's new workers are still starting (importing \
                 the apps); this worker goes on accepting until they are ready, {} ms at most",
                BOUND_MS.load(Ordering::Acquire)
            ),
        );
        // SAFETY: on the event loop; the timer is a static.
        unsafe {
            crate::ffi::timer::keep_armed(
                CHECK.event(),
                Some(check),
                std::ptr::null_mut(),
                CHECK_MS,
            )
        };
    })
}

/// The waiting worker's timer: quits once the newer workers are ready, or at the bound.
unsafe extern "C" fn check(ev: *mut ngx_event_t) {
    guard("the reload's hand-over", (), || {
        // SAFETY: plain read of nginx's cached clock on the event loop.
        let now = unsafe { nginx_sys::ngx_current_msec };
        let waited = now.saturating_sub(WAITING_SINCE.load(Ordering::Acquire)) as u64;
        let bound = BOUND_MS.load(Ordering::Acquire);
        // SAFETY: nginx's own flag, on the event loop.
        let stopping = unsafe { nginx_sys::ngx_terminate != 0 || nginx_sys::ngx_exiting != 0 };
        if newer_workers_starting() && waited < bound && !stopping {
            accepting_for(ACCEPTING_FOR_MS);
            // SAFETY: the event is the static check timer, on the event loop.
            unsafe { nginx_sys::ngx_add_timer(ev, CHECK_MS) };
            return;
        }
        let failed = starts().map_or(0, |s| s.failed);
        let why = if newer_workers_starting() {
            format!("are still not ready after {waited} ms")
        } else if failed > 0 {
            format!(
                "have started after {waited} ms, {failed} of them without their apps (they load \
                 them again once the old workers, which may hold what they need, have exited)"
            )
        } else {
            format!("are ready after {waited} ms")
        };
        crate::ffi::log::cycle_log(
            NGX_LOG_NOTICE as usize,
            &format!("wsgi: the reload's new workers {why}; this worker quits"),
        );
        if stopping {
            QUITTING.store(true, Ordering::Release);
            crate::exit_drain::quit();
        } else {
            drain_then_quit();
        }
    })
}

/// The quit of a reload whose newer workers accept: the worker stops accepting and drains its
/// keep-alive connections first (nginx's quit would close the idle ones at once, losing what
/// their clients sent in that instant), then quits. A quit that comes meanwhile is taken at
/// once.
fn drain_then_quit() {
    QUITTING.store(true, Ordering::Release);
    crate::ffi::log::cycle_log(
        NGX_LOG_NOTICE as usize,
        &format!(
            "wsgi: told to quit by a reload: this worker stops accepting and serves the next \
             request of each keep-alive connection, which closes it, for {} ms at most; then it \
             quits",
            crate::exit_drain::DRAIN_MS
        ),
    );
    // SAFETY: on the event loop (the channel's or the wait's handler).
    unsafe { crate::exit_drain::begin(crate::exit_drain::Accepting::Stop) };
}

/// Whether the master has taken a newer configuration than this worker's (a reload: a quit
/// without one is `nginx -s quit`).
fn newer_generation() -> bool {
    starts().is_some_and(|s| s.generation > crate::generation::current())
}

#[cfg(test)]
mod tests {
    use super::Starts;

    #[test]
    fn the_starts_keep_each_count_in_one_word() {
        let s = Starts {
            generation: u32::MAX - 1,
            expected: 1024,
            ready: 1023,
            failed: 1,
        };
        assert_eq!(Starts::unpack(s.pack()), s);
        assert!(!s.still_starting());
        assert!(Starts { failed: 0, ..s }.still_starting());
    }

    #[test]
    fn a_count_past_its_bits_stays_at_its_largest_value_without_touching_the_others() {
        let s = Starts {
            generation: 7,
            expected: 3,
            ready: 2,
            failed: u16::MAX,
        };
        let back = Starts::unpack(s.pack());
        assert_eq!((back.generation, back.expected, back.ready), (7, 3, 2));
        assert_eq!(back.failed, 1023);
    }
}
