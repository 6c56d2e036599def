//! Worker start and exit: one interpreter per worker, the apps imported before the first request,
//! Python finalised after nginx's thread pools have stopped.

use std::ffi::c_void;
use std::time::Duration;

use nginx_sys::{
    ngx_cycle_t, ngx_process, ngx_setproctitle, NGX_LOG_ALERT, NGX_PROCESS_SINGLE,
    NGX_PROCESS_WORKER,
};
use ngx_wsgi::asgi::event_loop::LoopStuck;
use ngx_wsgi::{interpreter, Apps};

/// Whether this process serves requests (a worker, or nginx without a master); cache manager and
/// loader processes run `init_process` too, but must not start Python.
fn serves_requests() -> bool {
    // SAFETY: plain read of nginx's process role, set before init_process runs.
    let role = unsafe { ngx_process } as u32;
    role == NGX_PROCESS_WORKER || role == NGX_PROCESS_SINGLE
}

/// Starts the worker's side of the module: metrics, recycling limits, the notifier (whose
/// finished items go to `on_finished`), the interpreter and every app.
///
/// # Safety
/// Once per worker, from `init_process`, on the event loop; `cycle` is live.
pub(crate) unsafe fn start_worker(
    cycle: *mut ngx_cycle_t,
    on_finished: unsafe fn(*mut c_void),
) -> Result<(), String> {
    if !serves_requests() {
        return Ok(());
    }
    // SAFETY: per the function contract.
    let Some(mc) = crate::conf::cycle_main_conf(unsafe { &*cycle }) else {
        return Ok(());
    };
    crate::ffi::log::this_thread_is_the_loop();
    crate::metrics::attach(mc.status_zone.0);
    if mc.python.apps.is_empty() {
        return Ok(());
    }
    crate::sibling_workers::starting();
    // SAFETY: per the function contract (init_process: nginx's event module set the listening
    // sockets up before the http modules' turn).
    unsafe { crate::busy_handoff::configure(mc.limits.busy_handoff()) };
    crate::exec_child::after_each_accept(crate::busy_handoff::after_accept);
    crate::recycle::configure(
        mc.limits.max_requests,
        mc.limits.max_requests_jitter,
        mc.limits.max_rss_bytes(),
    );
    // The app's children are its own: nginx's SIGCHLD handler would reap them (see the core's
    // `signals`). A worker starts no children of nginx's.
    ngx_wsgi::signals::leave_children_to_their_parents()
        .map_err(|e| format!("wsgi: SIGCHLD: {e}"))?;
    ngx_wsgi::signals::default_sigsys_for_children().map_err(|e| format!("wsgi: SIGSYS: {e}"))?;
    crate::fork_child::close_nginx_sockets_in_children();
    // SAFETY: per the function contract; Python has not started.
    unsafe { crate::exec_child::close_nginx_descriptors_on_exec(cycle) };
    // SAFETY: per the function contract.
    unsafe { crate::notify::init(cycle, on_finished) }.map_err(|e| format!("wsgi: {e}"))?;
    // SAFETY: per the function contract; nginx's event module has set up the listening sockets.
    unsafe { crate::descriptor_watch::start(cycle, crate::notify::event_fd()) };
    // SAFETY: per the function contract.
    unsafe { crate::heap_trim::start() };
    name_the_worker();
    mc.umask.apply();
    // The configuration check imported every app; one that fails here all the same (its file
    // changed since, a virtualenv being rebuilt under a worker that recycles or replaces a
    // crashed one) must not take the worker down: nginx would not start another, and with
    // none left its listening sockets would hold connections that no one answers. The worker
    // serves its other locations, answers 500 for what is not loaded, and tries again.
    let every = crate::recycle::RETRY_LOAD_MS / 1000;
    let retry = if crate::old_workers::running() {
        format!(
            "replaces itself to try again as soon as the reload's old workers, which may hold \
             what it needs, have exited (or in {every} s, if they no longer serve its apps then)"
        )
    } else {
        format!("replaces itself in {every} s to try again")
    };
    interpreter::exit_hurried_by(crate::fast_stop::asked);
    // The event loop is busy importing the apps (seconds for a large one): what their own
    // threads log meanwhile carries its own time, not the one nginx cached as the import began.
    crate::ffi::log::loop_waits(true);
    let mut failed: Vec<String> = match interpreter::initialize(&mc.python.settings) {
        Ok(()) => Apps::load_all(&mc.python.specs())
            .into_iter()
            .map(|(i, e)| {
                let app = mc.python.apps[i].describe();
                format!("{app} cannot be loaded: {e}; this worker answers 500 for it and {retry}")
            })
            .collect(),
        Err(e) => vec![format!(
            "wsgi: Python cannot start: {e}; this worker answers 500 for its apps and {retry}"
        )],
    };
    if interpreter::is_running() {
        if let Err(e) = start_asgi(mc) {
            // A loop that died in the startup is the worker's end, as before (a fresh worker
            // would meet it again at once); a startup that failed (a database down for a while)
            // or a loop that could not start (uvloop missing from a virtualenv being rebuilt)
            // is met as an app that cannot be imported.
            if ngx_wsgi::asgi::event_loop::get().is_some_and(|l| l.died()) {
                crate::ffi::log::loop_waits(false);
                return Err(e);
            }
            failed.push(format!(
                "{e}; this worker answers 500 for its ASGI apps and {retry}"
            ));
        }
    }
    crate::ffi::log::loop_waits(false);
    // From now on the event loop's thread runs no Python (whose children could inherit it).
    ngx_wsgi::signals::keep_child_signals_from_this_thread();
    for why in &failed {
        crate::ffi::log::cycle_log(NGX_LOG_ALERT as usize, why);
    }
    if !failed.is_empty() {
        // SAFETY: per the function contract.
        unsafe { crate::recycle::retry_load_later() };
    }
    // The apps start within the check's timeout each time: an old worker waits as long for a
    // reload's new ones, and a little more.
    let handover_bound = mc.python.check_timeout() + Duration::from_secs(5);
    // SAFETY: per the function contract.
    unsafe { crate::reload_handover::ready(cycle, handover_bound, failed.is_empty()) };
    if failed.is_empty() {
        crate::sibling_workers::ready();
    } else {
        // SAFETY: on the event loop.
        unsafe { crate::unloaded_aside::begin(handover_bound) };
    }
    Ok(())
}

/// Gives the worker the title nginx gives it only after `init_process`: processes the app
/// starts while it is imported (a `multiprocessing.Pool`, a forked helper) copy the title, and
/// would otherwise show in `ps` (and match `pkill -f`) as "nginx: master process".
fn name_the_worker() {
    // SAFETY: a plain read of nginx's process role.
    if unsafe { ngx_process } as u32 == NGX_PROCESS_WORKER {
        // SAFETY: nginx copies the title into its argv area and never writes through the
        // pointer; the worker's title is set this way by nginx itself.
        unsafe { ngx_setproctitle(c"worker process".as_ptr().cast_mut()) };
    }
}

/// With some `asgi_app`: the worker's asyncio loop (its own thread) and each app's lifespan
/// startup, which must succeed within `wsgi_check_timeout` for the loop to take requests.
fn start_asgi(mc: &crate::conf::MainConf) -> Result<(), String> {
    let asgi: Vec<(usize, String)> = mc
        .python
        .apps
        .iter()
        .enumerate()
        .filter(|(i, a)| a.spec.kind == ngx_wsgi::AppKind::Asgi && Apps::get(*i).is_some())
        .map(|(i, a)| (i, a.describe()))
        .collect();
    if asgi.is_empty() {
        return Ok(());
    }
    let event_loop = ngx_wsgi::asgi::event_loop::start(mc.asgi.event_loop())
        .map_err(|e| format!("asgi: {e}"))?;
    event_loop.on_death(crate::recycle::after_loop_death);
    event_loop.startup(&asgi, mc.python.check_timeout())
}

/// What the ASGI apps' lifespan shutdown, and then the apps' atexit handlers, may each take when
/// the worker ends at once past its exit's bound (see [`before_forced_exit`]).
const FORCED_EXIT_WAIT: Duration = Duration::from_secs(1);

/// The worker ends at once past its exit's bound, WSGI requests still inside Python (threads
/// that cannot be stopped): as at a fast stop, the ASGI apps' tasks are cancelled and their
/// lifespan shutdown runs, then the apps' atexit handlers, each for [`FORCED_EXIT_WAIT`] at
/// most, so that one stuck thread does not cost every app its clean-up.
///
/// # Safety
/// On the event loop (nginx's exit timer), the thread that started Python.
pub(crate) unsafe fn before_forced_exit() {
    if !interpreter::is_running() {
        return;
    }
    crate::ffi::log::loop_waits(true);
    // A loop that takes nothing handed to it cannot run the shutdown either (see `stop_worker`).
    // SAFETY: per the function contract.
    let lifespan_wait = match unsafe { crate::asgi_queue::this_loop_stuck() } {
        true => Duration::ZERO,
        false => FORCED_EXIT_WAIT,
    };
    let loop_stuck =
        ngx_wsgi::asgi::event_loop::get().and_then(|l| l.stop(Duration::ZERO, lifespan_wait).err());
    // SAFETY: per the function contract.
    unsafe {
        crate::ffi::log::flush_deferred();
        exit_handlers_alone(FORCED_EXIT_WAIT, loop_stuck.as_ref());
    }
}

/// Runs the apps' atexit handlers alone (`within` at most), for a worker that ends next without
/// finalizing Python, first saying where a stuck loop is stuck; writes what they logged.
///
/// # Safety
/// On the event loop, the thread that started Python.
unsafe fn exit_handlers_alone(within: Duration, loop_stuck: Option<&LoopStuck>) {
    if let Some(stuck) = loop_stuck {
        stuck.log();
    }
    interpreter::run_exit_handlers_only(within, |py| {
        if let Some(stuck) = loop_stuck {
            stuck.log_stack(py);
        }
    });
    // SAFETY: per the function contract.
    unsafe { crate::ffi::log::flush_deferred() };
}

/// What each of the exit's waits may take at a fast stop (see `stop_worker`).
const FAST_STOP_WAIT: Duration = Duration::from_millis(200);

/// What the apps' atexit handlers may take at a fast stop with requests left in Python: with
/// the waits before them (the ASGI loop's 0.1 s + 0.1 s + its end's 0.25 s at most, the
/// threads' 0.2 s), within the 1.55 s nginx's master gives the worker.
const FAST_STOP_EXIT_HANDLERS: Duration = Duration::from_millis(800);

/// At a fast stop with every request done: the wait for the app's own threads, within
/// [`FAST_STOP_EXIT_HANDLERS`] with the GIL's and Python's finalisation (atexit handlers
/// included).
const FAST_STOP_JOIN: Duration = Duration::from_millis(100);

/// Stops the module's own threads (nginx's pools have stopped by now, and, but at a fast stop,
/// every request is done), then finalises Python, waiting `wsgi_shutdown_timeout` at most for
/// the app's threads.
/// When some are still running then, the worker ends at once: nothing of nginx's teardown may
/// meet them.
///
/// # Safety
/// From `exit_process`, on the event loop; `cycle` is live.
pub(crate) unsafe fn stop_worker(cycle: *mut ngx_cycle_t) -> Result<(), String> {
    if !interpreter::is_running() {
        return Ok(());
    }
    // SAFETY: per the function contract.
    let timeout = crate::conf::cycle_main_conf(unsafe { &*cycle })
        .map_or(crate::conf::limits::DEFAULT_SHUTDOWN_TIMEOUT_MS, |mc| {
            mc.limits.shutdown_timeout()
        });
    let shutdown = Duration::from_millis(timeout as u64);
    // A fast stop (SIGTERM, `nginx -s stop`) ends requests where they are, and nginx's master
    // kills a worker still there 1.5 s after it: each wait gets a share of that, so that the
    // apps' atexit handlers run before it (a request left inside Python does not hold them).
    // SAFETY: a flag nginx's signal handler sets; read on the thread that handles it.
    let fast = unsafe { nginx_sys::ngx_terminate } != 0;
    // SAFETY: on the event loop (per the function contract).
    let stuck = unsafe { crate::asgi_queue::this_loop_stuck() };
    let (mut tasks_wait, mut lifespan_wait, threads_wait, finalize_wait) = if fast {
        (
            (FAST_STOP_WAIT / 2).min(shutdown),
            (FAST_STOP_WAIT / 2).min(shutdown),
            FAST_STOP_WAIT,
            FAST_STOP_JOIN.min(shutdown),
        )
    } else {
        (shutdown, shutdown, Duration::from_secs(5), shutdown)
    };
    if stuck {
        // The loop takes nothing handed to it: neither its tasks' end nor the apps' lifespan
        // shutdown can come, and waiting for them only keeps the worker's place empty.
        (tasks_wait, lifespan_wait) = (Duration::ZERO, Duration::ZERO);
    }
    // From here this thread waits for others, which log meanwhile: their entries take their own
    // time, and those queued for the loop are written after each wait.
    crate::ffi::log::loop_waits(true);
    // Requests in flight have ended: the apps' lifespan shutdown, then the loop's end.
    let loop_stuck =
        ngx_wsgi::asgi::event_loop::get().and_then(|l| l.stop(tasks_wait, lifespan_wait).err());
    let threads_ended = crate::dispatch::stop_threads(threads_wait);
    // SAFETY: the event loop's thread (per the function contract).
    unsafe { crate::ffi::log::flush_deferred() };
    if loop_stuck.is_some() || (fast && !threads_ended) {
        // Threads are still inside Python: finalising the interpreter under them could end
        // them mid-call, or wait for them for ever. The apps' atexit handlers run alone, then
        // the worker ends.
        let within = if fast {
            FAST_STOP_EXIT_HANDLERS
        } else {
            finalize_wait
        };
        // SAFETY: as above.
        unsafe { exit_handlers_alone(within, loop_stuck.as_ref()) };
        // SAFETY: ends the worker at once: nothing of nginx's teardown may meet those threads.
        unsafe { libc::_exit(i32::from(loop_stuck.is_some())) };
    }
    let finalized = interpreter::finalize(finalize_wait, fast.then_some(FAST_STOP_EXIT_HANDLERS));
    // SAFETY: as above.
    unsafe { crate::ffi::log::flush_deferred() };
    crate::ffi::log::loop_waits(false);
    match finalized {
        Ok(interpreter::Finalized::Cleanly) => Ok(()),
        // SAFETY: ends the worker at once, as the log entry just said.
        Ok(interpreter::Finalized::ThreadsLeft) => unsafe { libc::_exit(0) },
        Err(e) => Err(format!("wsgi: {e}")),
    }
}
