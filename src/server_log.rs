//! The core's log lines (tracebacks, `wsgi.errors`, Python's `logging`) go out as `tracing`
//! events; each server adapter routes them to its own error log through [`ErrorLog`].

use std::any::Any;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// A server's error log.
pub trait ErrorLog: Send + Sync + 'static {
    /// Whether an entry of `level` would be written now.
    fn enabled(&self, level: &Level) -> bool;
    /// Writes one entry (possibly several lines) at `level`.
    fn write(&self, level: &Level, text: &str);

    /// Writes one entry now, from whatever thread: the process ends right after it, and the
    /// thread that would otherwise write it (a server's event loop) may never get to it.
    fn write_final(&self, level: &Level, text: &str) {
        self.write(level, text);
    }
}

/// Runs `f` with this thread's entries written at once ([`ErrorLog::write_final`]): its last
/// words before the process ends.
pub fn last_words<R>(f: impl FnOnce() -> R) -> R {
    LAST_WORDS.with(|on| on.set(true));
    let result = f();
    LAST_WORDS.with(|on| on.set(false));
    result
}

thread_local! {
    static LAST_WORDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ROUTE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with this thread's entries about one request, which go where `route` says: the
/// server's own handle of that request's log (nginx's location `error_log`, a virtual host's
/// log), 0 for the server's main log. The route before is restored after.
pub fn routed<R>(route: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            ROUTE.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(ROUTE.with(|r| r.replace(route)));
    f()
}

/// Where this thread's entries go now (see [`routed`]; 0: the server's main log).
pub fn route() -> usize {
    ROUTE.with(|r| r.get())
}

/// Makes `log` the process's `tracing` subscriber (the first call wins; forked children inherit
/// it).
pub fn install(log: impl ErrorLog) {
    let _ = tracing::subscriber::set_global_default(Routed(log));
}

/// From now on this process's entries go to its standard error alone, never to the server's log
/// files: for the configuration check's child, which closed the server's descriptors (the numbers
/// of its log files may already name files the app opened, or the check's report pipe).
pub fn to_standard_error_only() {
    STANDARD_ERROR_ONLY.store(true, std::sync::atomic::Ordering::Relaxed);
}

static STANDARD_ERROR_ONLY: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The text of a caught panic's payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, called from the server's C code (`what` says for what): a Rust panic is not to
/// unwind into C, so it is told to `alert` (the server's log at its alert level) and
/// `on_panic`, the caller's error value, is returned instead.
pub fn catch_panic<R>(
    what: &str,
    on_panic: R,
    alert: impl FnOnce(&str),
    f: impl FnOnce() -> R,
) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            alert(&format!(
                "wsgi: internal error in {what}: {}",
                panic_message(&*payload)
            ));
            on_panic
        }
    }
}

struct Routed<L>(L);

/// An event's message first, then its other fields as `name=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.0.insert_str(0, &text);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<L: ErrorLog> Subscriber for Routed<L> {
    /// Asked at every event, never cached per call site: whether an entry is written depends
    /// on the log it goes to, which depends on the request it is about (see [`routed`]).
    fn register_callsite(
        &self,
        _metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata.level())
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = Message::default();
        event.record(&mut message);
        let target = event.metadata().target();
        let level = event.metadata().level();
        if STANDARD_ERROR_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: plain syscall.
            let pid = unsafe { libc::getpid() };
            let line = format!(
                "[{}] {target} (configuration check, pid {pid}): {}\n",
                level.as_str().to_ascii_lowercase(),
                message.0.trim_end()
            );
            crate::log_text::write_all(libc::STDERR_FILENO, line.as_bytes());
            return;
        }
        let text = format!("{target}: {}", message.0);
        if LAST_WORDS.with(|on| on.get()) {
            self.0.write_final(level, &text);
        } else {
            self.0.write(level, &text);
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_told_and_answered_with_the_callers_error_value() {
        let mut told = String::new();
        let got = catch_panic(
            "a test",
            -1,
            |line| told = line.to_owned(),
            || -> i32 { panic!("went {}", "wrong") },
        );
        assert_eq!(got, -1);
        assert_eq!(told, "wsgi: internal error in a test: went wrong");
        let got = catch_panic(
            "a test",
            -1,
            |_| unreachable!("no panic, nothing told"),
            || 7,
        );
        assert_eq!(got, 7);
    }
}
