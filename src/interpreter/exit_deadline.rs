//! The bound of a server process's exit: a watch thread that ends the process when a stage
//! of the exit (the `atexit` handlers, Python's teardown, the wait for the GIL) outlives it,
//! or outlives the shorter bound of a fast stop that came meanwhile.

use super::exit_hurry::{hurried_since, HURRIED_BOUND, HURRY_LOOK};

/// Ends the process if what runs after the app's threads were waited for (`atexit` handlers,
/// Python's teardown) has not ended within the shutdown timeout: a handler that waits for a
/// stuck thread (`ThreadPoolExecutor.shutdown(wait=True)`) would otherwise keep the exiting
/// process, an old nginx worker, for ever. Dropping it cancels it.
pub(super) struct ExitDeadline(Option<std::sync::mpsc::Sender<()>>);

impl ExitDeadline {
    pub(super) fn start(within: std::time::Duration, what: &'static str) -> ExitDeadline {
        Self::start_exactly(within.max(std::time::Duration::from_secs(1)), what)
    }

    pub(super) fn start_exactly(within: std::time::Duration, what: &'static str) -> ExitDeadline {
        Self::start_after(within, std::time::Duration::ZERO, what)
    }

    /// With a bound of its own, not the shutdown timeout's: the log gives it in ms alone.
    pub(super) fn start_own(within: std::time::Duration, what: &'static str) -> ExitDeadline {
        Self::watch(within, std::time::Duration::ZERO, what, false)
    }

    /// Fires `grace` after `within`, a bound past another one; the log names `within`.
    pub(super) fn start_after(
        within: std::time::Duration,
        grace: std::time::Duration,
        what: &'static str,
    ) -> ExitDeadline {
        Self::watch(within, grace, what, true)
    }

    fn watch(
        within: std::time::Duration,
        grace: std::time::Duration,
        what: &'static str,
        the_setting: bool,
    ) -> ExitDeadline {
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        let watch = move || {
            let end = std::time::Instant::now() + within + grace;
            // The exit's one bound once hurried, shared by its stages (each has a watch); `cut`:
            // it came before this stage's own.
            let cut = loop {
                let (limit, cut) = match hurried_since() {
                    Some(at) if at + HURRIED_BOUND < end => (at + HURRIED_BOUND, true),
                    _ => (end, false),
                };
                let now = std::time::Instant::now();
                if now >= limit {
                    break cut;
                }
                match cancelled.recv_timeout((limit - now).min(HURRY_LOOK)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            };
            {
                let setting = SHUTDOWN_WHAT
                    .get()
                    .map_or("the shutdown timeout", |w| w.as_str());
                let bound = match (cut, the_setting) {
                    (true, _) => format!(
                        "{} ms of a fast stop that came meanwhile",
                        HURRIED_BOUND.as_millis()
                    ),
                    (false, true) => format!("{setting} ({} ms)", within.as_millis()),
                    (false, false) => format!("{} ms", within.as_millis()),
                };
                crate::server_log::last_words(|| {
                    tracing::error!(
                        target: "wsgi",
                        "{what} still running after {bound}; the process exits now"
                    )
                });
                if let Some(act) = LAST_ACT.get() {
                    act();
                }
                // SAFETY: ends the process without running anything more of it (the thread
                // that runs Python's exit is stuck).
                unsafe { libc::_exit(1) };
            }
        };
        match std::thread::Builder::new()
            .name("wsgi-exit".into())
            .spawn(watch)
        {
            Ok(_) => ExitDeadline(Some(cancel)),
            // No thread for it: the exit goes on unwatched, as before.
            Err(_) => ExitDeadline(None),
        }
    }
}

impl Drop for ExitDeadline {
    fn drop(&mut self) {
        // Disconnecting wakes the watcher, which then returns.
        self.0.take();
    }
}

/// How long a server process's exit waits for the app's threads and its lifespan shutdown
/// unless the server's configuration says otherwise (`wsgi_shutdown_timeout`,
/// `NgxWsgiShutdownTimeout`).
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What bounds the wait for the app's threads, as the server's configuration calls it (for the
/// log line, e.g. "wsgi_shutdown_timeout").
pub(super) static SHUTDOWN_WHAT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What the process does last when its exit deadline ends it (the configuration check ends the
/// processes the apps started).
static LAST_ACT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Has `act` run just before an exit deadline ends the process (once per process).
pub(crate) fn before_deadline_exit(act: fn()) {
    let _ = LAST_ACT.set(act);
}

/// Names the server's setting that bounds [`super::finalize`]'s wait for the app's threads.
pub fn name_shutdown_timeout(name: &str) {
    let _ = SHUTDOWN_WHAT.set(name.to_owned());
}
