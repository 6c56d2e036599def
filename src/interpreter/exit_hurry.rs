//! Whether a graceful exit under way is hurried: a fast stop came meanwhile (QUIT, then TERM,
//! as systemd's and Debian's stop send them), and the server's master kills a process still
//! there soon after, so the exit's waits are cut short as a fast stop's are.

/// What says that the server wants its graceful exit over at once (a fast stop came meanwhile:
/// nginx's master kills a worker still there soon after).
static HURRIED: std::sync::OnceLock<fn() -> bool> = std::sync::OnceLock::new();

/// How long an exit goes on once hurried: what a fast stop gives the atexit handlers.
pub(super) const HURRIED_BOUND: std::time::Duration = std::time::Duration::from_millis(800);

/// How often an exit's waits look whether they are hurried.
pub(crate) const HURRY_LOOK: std::time::Duration = std::time::Duration::from_millis(50);

/// Has `check` (any thread, no GIL) say whether the exit under way is hurried: its waits for the
/// app's threads and atexit handlers are cut short, as a fast stop's are.
pub fn exit_hurried_by(check: fn() -> bool) {
    let _ = HURRIED.set(check);
}

pub(crate) fn hurried() -> bool {
    hurried_since().is_some()
}

/// What each wait of an exit gets once hurried (the app's threads' join, the ASGI tasks' end,
/// the lifespan shutdown): within [`HURRIED_BOUND`] with what follows them.
pub(crate) const HURRIED_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How a wait cut short by a fast stop names its bound in the log.
pub(crate) fn hurried_wait_named() -> String {
    format!(
        "a fast stop that came during the exit ({} ms)",
        HURRIED_WAIT.as_millis()
    )
}

/// `deadline`, or [`HURRIED_WAIT`] from now when the exit is hurried and that comes first; and
/// whether it was cut so.
pub(crate) fn hurried_deadline(deadline: std::time::Instant) -> (std::time::Instant, bool) {
    let cut = std::time::Instant::now() + HURRIED_WAIT;
    match hurried() && cut < deadline {
        true => (cut, true),
        false => (deadline, false),
    }
}

/// When the exit was first seen hurried, if it was.
pub(super) fn hurried_since() -> Option<std::time::Instant> {
    static SINCE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    if let Some(at) = SINCE.get() {
        return Some(*at);
    }
    HURRIED
        .get()
        .is_some_and(|check| check())
        .then(|| *SINCE.get_or_init(std::time::Instant::now))
}
