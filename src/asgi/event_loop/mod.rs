//! The process's asyncio event loop, on a thread of its own (never the server's): requests
//! arrive through a queue and one eventfd the loop watches (`loop.add_reader`), written only
//! when the queue was empty, so a busy loop takes a batch per wake-up. Lifespan runs here too
//! (`lifespan`); an error of the loop's own ends it (`death`); an app that keeps its thread is
//! found (`stall`).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyModule};

mod death;
mod lifespan;
mod stall;

pub use lifespan::{check_lifespan, LoopStuck};

use super::http::{HttpExchange, HttpRequest};
use super::task_watch::{LoopThread, TaskWatch};
use super::waker::{WakeQueue, Waker};

/// Which asyncio event loop runs the apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoopKind {
    #[default]
    Asyncio,
    /// `uvloop`, which must be installed in the app's environment.
    Uvloop,
}

impl LoopKind {
    /// The directive's word for it.
    pub fn name(self) -> &'static str {
        match self {
            LoopKind::Asyncio => "asyncio",
            LoopKind::Uvloop => "uvloop",
        }
    }

    /// Python code that evaluates to a function making a new loop.
    fn factory(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        match self {
            LoopKind::Asyncio => py.import("asyncio")?.getattr("new_event_loop"),
            LoopKind::Uvloop => py.import("uvloop")?.getattr("new_event_loop"),
        }
    }
}

const DRIVER: &std::ffi::CStr = {
    const SOURCE: &str = concat!(include_str!("driver.py"), "\0");
    match std::ffi::CStr::from_bytes_with_nul(SOURCE.as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("driver.py has a NUL byte"),
    }
};

fn driver(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    PyModule::from_code(
        py,
        DRIVER,
        c"ngx_wsgi_asgi_driver.py",
        c"ngx_wsgi_asgi_driver",
    )
}

/// Work run on the loop's thread with the GIL, the loop and the driver module.
type Call = Box<dyn FnOnce(Python<'_>, &Bound<'_, PyAny>, &Bound<'_, PyModule>) + Send>;

enum Item {
    Http(Box<HttpRequest>),
    Ws(Box<super::websocket::WsRequest>),
    Wake(Arc<Waker>),
    Call(Call),
    Stop,
}

/// The loop's side of one app task, which the driver calls: `begin()` is the task's first step,
/// and the object itself is called when the task ends (from the driver's done callback).
#[pyclass(frozen, module = "ngx_wsgi", name = "TaskHooks")]
struct TaskHooks {
    event_loop: &'static AsgiLoop,
    watch: Arc<TaskWatch>,
    waker: Arc<Waker>,
}

#[pymethods]
impl TaskHooks {
    /// False when the server gave up on the request while it waited (then the app must not run).
    fn begin(&self) -> bool {
        let started = self.event_loop.start(&self.watch);
        if !started {
            // Nothing will end the exchange: it must not keep itself alive.
            self.waker.watch(None);
        }
        started
    }

    /// The loop died with the task unfinished: its exchange ends with `error` (a 500, or a
    /// cut once the head left), as if the app had raised it, and the task counts as ended.
    fn abandon(
        &self,
        task: &Bound<'_, PyAny>,
        exchange: &Bound<'_, PyAny>,
        error: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ended = (self.watch.started() || self.begin())
            .then(|| exchange.call_method1(pyo3::intern!(task.py(), "ended"), (error,)));
        self.__call__(task);
        ended.transpose().map(drop)
    }

    /// The task ended, however it ended.
    fn __call__(&self, _task: &Bound<'_, PyAny>) {
        self.event_loop.tasks.fetch_sub(1, Ordering::AcqRel);
        let lost = self.watch.task_done(self.event_loop);
        if self.watch.started() {
            crate::metrics::loop_task_done(lost);
        }
    }
}

/// The event loop of this process.
pub struct AsgiLoop {
    inbox: Mutex<Vec<Item>>,
    efd: RawFd,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// HTTP tasks running (a response may be complete while its app still runs).
    tasks: AtomicUsize,
    /// Requests handed over whose app the loop has not started yet (it is busy, or blocked).
    queued: AtomicUsize,
    /// The loop's Python thread id (0 until it runs).
    thread_ident: AtomicU64,
    /// The asyncio loop object, once made.
    loop_object: OnceLock<Py<PyAny>>,
    /// The driver module, once made.
    driver_module: OnceLock<Py<PyModule>>,
    /// A timed-out task was interrupted with an asynchronous exception at some point.
    interrupted: AtomicBool,
    /// The server stopped the loop (the process's end); any other stop is an app's.
    stopping: AtomicBool,
    /// How long the loop's end may wait for the tasks it cancels.
    teardown_ms: AtomicU64,
    /// Since when the inbox has held work the loop has not taken (`stall::clock_ms`; 0: empty).
    unserved_since: AtomicU64,
    /// How many times the loop has taken its work (read its wake-up): one that stays the same
    /// while a wake-up waits means the loop has not turned since.
    turns: AtomicU64,
    /// The loop ended on an error of its own: nothing handed to it runs any more.
    died: AtomicBool,
    /// What the server does once the loop died (any thread: the loop's).
    on_death: OnceLock<fn()>,
    /// Every app's lifespan startup completed.
    started_up: AtomicBool,
}

static LOOP: OnceLock<AsgiLoop> = OnceLock::new();

/// The apps' lifespan objects and states, by app index (event loop thread only).
struct Lifespans {
    objects: HashMap<usize, Py<PyAny>>,
    states: HashMap<usize, Py<PyDict>>,
}

static LIFESPANS: Mutex<Option<Lifespans>> = Mutex::new(None);

/// The running loop, if this process started one.
pub fn get() -> Option<&'static AsgiLoop> {
    LOOP.get()
}

/// Starts the loop's thread (once per process, after the interpreter started).
pub fn start(kind: LoopKind) -> Result<&'static AsgiLoop, String> {
    if let Some(l) = LOOP.get() {
        return Ok(l);
    }
    // SAFETY: plain syscall.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd(): {}", std::io::Error::last_os_error()));
    }
    let l = LOOP.get_or_init(|| AsgiLoop::new(efd));
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = crate::signals::spawn_helper("asgi-loop", None, move || l.run(kind, ready_tx))
        .map_err(|e| format!("cannot start the asgi event loop thread: {e}"))?;
    *l.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(l),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the asgi event loop thread ended while starting".into()),
    }
}

impl AsgiLoop {
    /// A loop that never runs: its wakers post into an inbox nobody drains (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests() -> &'static AsgiLoop {
        // SAFETY: plain syscall.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        Box::leak(Box::new(AsgiLoop::new(efd)))
    }

    /// A loop not started yet, woken through `efd`.
    fn new(efd: RawFd) -> AsgiLoop {
        AsgiLoop {
            inbox: Mutex::new(Vec::new()),
            efd,
            thread: Mutex::new(None),
            tasks: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            thread_ident: AtomicU64::new(0),
            loop_object: OnceLock::new(),
            driver_module: OnceLock::new(),
            interrupted: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            teardown_ms: AtomicU64::new(1000),
            unserved_since: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            died: AtomicBool::new(false),
            started_up: AtomicBool::new(false),
            on_death: OnceLock::new(),
        }
    }

    fn run(&'static self, kind: LoopKind, ready: mpsc::Sender<Result<(), String>>) {
        crate::interpreter::attach(|py| {
            let setup = (|| -> PyResult<(Bound<'_, PyAny>, Bound<'_, PyModule>)> {
                let event_loop = kind.factory(py)?.call0()?;
                py.import("asyncio")?
                    .call_method1("set_event_loop", (&event_loop,))?;
                let driver = driver(py)?;
                driver.call_method1("leave_signals_to_the_server", (&event_loop,))?;
                let drain = {
                    let loop_obj = event_loop.clone().unbind();
                    let driver_obj = driver.clone().unbind();
                    PyCFunction::new_closure(
                        py,
                        None,
                        None,
                        move |args, _kwargs| -> PyResult<()> {
                            let py = args.py();
                            self.drain(py, loop_obj.bind(py), driver_obj.bind(py));
                            Ok(())
                        },
                    )?
                };
                event_loop.call_method1("add_reader", (self.efd, drain))?;
                super::held_wakes::install(self.efd);
                let _ = self.loop_object.set(event_loop.clone().unbind());
                let _ = self.driver_module.set(driver.clone().unbind());
                // SAFETY: plain query of the calling thread's identity.
                let ident = unsafe { pyo3::ffi::PyThread_get_thread_ident() };
                self.thread_ident.store(ident as u64, Ordering::Release);
                Ok((event_loop, driver))
            })();
            let (event_loop, driver) = match setup {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(format!(
                        "cannot start the asgi event loop: {}",
                        crate::traceback::format(py, &e)
                    )));
                    return;
                }
            };
            *LIFESPANS.lock().unwrap_or_else(|e| e.into_inner()) = Some(Lifespans {
                objects: HashMap::new(),
                states: HashMap::new(),
            });
            let _ = ready.send(Ok(()));
            loop {
                match event_loop.call_method0("run_forever") {
                    Ok(_) if self.stopping.load(Ordering::Acquire) => break,
                    // An app's `loop.stop()` (or `get_event_loop().stop()`): every ASGI request
                    // of the worker needs the loop, so it runs on.
                    Ok(_) => {
                        tracing::error!(target: "asgi", "an application stopped the event loop (loop.stop()); it runs on, as the worker's ASGI requests need it");
                    }
                    // A timeout's interrupt that fired outside its task (in the loop's own
                    // code, as the task ended): the loop is not broken, it goes on.
                    Err(e)
                        if crate::timeout_exit::from_the_deadline(py, &e)
                            && self.interrupted.load(Ordering::Acquire) =>
                    {
                        tracing::warn!(target: "asgi", "a timed-out task's {} landed in the event loop's own code; the loop goes on", e.get_type(py).name().map(|n| n.to_string()).unwrap_or_default());
                    }
                    // SystemExit or KeyboardInterrupt from an app's callback (`call_soon(sys.exit)`),
                    // which asyncio lets out of the loop: the app's error, not the loop's end.
                    Err(e) if !e.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                        tracing::error!(target: "asgi", "an application's callback raised out of the event loop; it runs on, as the worker's ASGI requests need it: {}", crate::traceback::format(py, &e));
                    }
                    Err(e) => {
                        self.died.store(true, Ordering::Release);
                        tracing::error!(target: "asgi", "the ASGI event loop died; its requests are answered, and those that follow are refused until the worker is replaced: {}", crate::traceback::format(py, &e));
                        break;
                    }
                }
            }
            // What apps left running (background tasks, tasks past the shutdown timeout) is
            // cancelled; by the worker's exit only when it is stopping, not when the loop died.
            if self.stopping.load(Ordering::Acquire) {
                super::task_watch::cancel_at_exit();
            }
            let within = self.teardown_ms.load(Ordering::Acquire) as f64 / 1000.0;
            // At the process's exit, a fast stop that comes while the tasks end cuts the wait
            // to its own share (the look reads the server's channel: at its exit only).
            let stopping = self.stopping.load(Ordering::Acquire);
            let hurried = PyCFunction::new_closure(py, None, None, move |_, _| -> PyResult<bool> {
                Ok(stopping && crate::interpreter::hurried())
            });
            let cancelled = hurried.and_then(|hurried| {
                driver.call_method1(
                    "cancel_all",
                    (
                        &event_loop,
                        within,
                        hurried,
                        crate::interpreter::HURRIED_WAIT.as_secs_f64(),
                    ),
                )
            });
            match cancelled {
                // A dead loop may fail again as it is: its death said why.
                Err(_) if self.died() => {}
                Err(e) => {
                    tracing::error!(target: "asgi", "cancelling the tasks left: {}", crate::traceback::format(py, &e));
                }
                Ok(_) => {}
            }
            if self.died() {
                self.answer_for_the_dead(py, &event_loop, &driver);
            }
            super::held_wakes::uninstall();
            let _ = event_loop.call_method1("remove_reader", (self.efd,));
            let _ = event_loop.call_method0("close");
            *LIFESPANS.lock().unwrap_or_else(|e| e.into_inner()) = None;
        });
        crate::interpreter::forget_thread();
        if self.died() {
            if let Some(on_death) = self.on_death.get() {
                on_death();
            }
        }
    }

    fn post(&self, item: Item) {
        let wake = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            // Checked under the lock that the dead loop's last look at the inbox takes too:
            // nothing handed over after that look is left in it unanswered.
            if self.died() {
                drop(inbox);
                self.refuse_when_dead(item);
                return;
            }
            let wake = inbox.is_empty();
            if wake {
                self.unserved_since
                    .store(stall::clock_ms(), Ordering::Relaxed);
            }
            inbox.push(item);
            wake
        };
        if wake {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to the eventfd; a full counter still leaves
            // the loop woken.
            unsafe { libc::write(self.efd, (&one as *const u64).cast(), 8) };
        }
    }

    /// A new waker for one request.
    pub fn waker(&'static self) -> Arc<Waker> {
        Waker::new(self)
    }

    /// Hands a request to the loop (any thread; never waits for Python).
    pub fn submit(&self, request: HttpRequest) {
        self.tasks.fetch_add(1, Ordering::AcqRel);
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.post(Item::Http(Box::new(request)));
    }

    /// Hands a WebSocket handshake to the loop (any thread; never waits for Python).
    pub fn submit_ws(&self, request: super::websocket::WsRequest) {
        self.tasks.fetch_add(1, Ordering::AcqRel);
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.post(Item::Ws(Box::new(request)));
    }

    /// Whether the loop's thread has ended (the loop died, or the process's end stopped it).
    fn ended(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|t| t.is_finished())
    }

    /// HTTP tasks still running.
    pub fn running(&self) -> usize {
        self.tasks.load(Ordering::Acquire)
    }

    /// Requests handed over whose app has not started: the loop is busy (or blocked by an app
    /// that does not await).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The server answers a request that is still queued (it waited too long): its app will
    /// never run. False when the loop started it meanwhile.
    pub fn give_up(&self, watch: &TaskWatch) -> bool {
        let given_up = watch.give_up();
        if given_up {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::dequeued_unrun();
        }
        given_up
    }

    /// The loop starts a request's app (false: the server gave up on it).
    fn start(&self, watch: &TaskWatch) -> bool {
        let started = watch.start();
        if started {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::loop_started();
        }
        started
    }

    /// A started request's deadline passed (any thread; never waits for Python): the server
    /// answered it; its task is cancelled on the loop, or interrupted by the watchdog when it
    /// keeps the loop busy. `what` begins the log entry.
    pub fn time_out(&'static self, watch: &Arc<TaskWatch>, what: String) {
        crate::metrics::asgi_timed_out(watch.mark_timed_out());
        let (w, text) = (watch.clone(), what.clone());
        self.post(Item::Call(Box::new(move |py, _l, driver| {
            w.cancel(py, driver, &text)
        })));
        let w = watch.clone();
        crate::watchdog::submit_call(Box::new(move |py| w.interrupt_if_blocking(py, self, what)));
    }

    fn drain(
        &'static self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        driver: &Bound<'_, PyModule>,
    ) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 (resets the counter).
        unsafe { libc::read(self.efd, (&mut count as *mut u64).cast(), 8) };
        self.turns.fetch_add(1, Ordering::AcqRel);
        // Also the end of the round in which a wake-up of the server was held.
        super::held_wakes::round_ended();
        crate::signals::block_server_signals();
        let items = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            self.unserved_since.store(0, Ordering::Relaxed);
            std::mem::take(&mut *inbox)
        };
        crate::chunk::release_dropped(py);
        for item in items {
            match item {
                Item::Http(req) => self.start_http(py, event_loop, driver, *req),
                Item::Ws(req) => self.start_ws(py, event_loop, driver, *req),
                Item::Wake(waker) => waker.fire(py),
                Item::Call(f) => f(py, event_loop, driver),
                Item::Stop => {
                    self.stopping.store(true, Ordering::Release);
                    let _ = event_loop.call_method0("stop");
                }
            }
        }
    }

    fn start_http(
        &'static self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        driver: &Bound<'_, PyModule>,
        req: HttpRequest,
    ) {
        let (app, server, watch) = (req.app, req.server.clone(), req.watch.clone());
        let waker = req.waker.clone();
        let scope = req.scope.clone();
        self.start_task(
            py,
            event_loop,
            driver,
            app,
            &scope,
            "a request",
            &watch,
            &waker,
            || {
                let exchange = Py::new(py, HttpExchange::new(req))?;
                let watched = exchange.clone_ref(py);
                waker.watch(Some(Box::new(move |py| {
                    if let Ok(mut ex) = watched.bind(py).try_borrow_mut() {
                        ex.notice_client_gone();
                    }
                })));
                Ok(exchange.into_any())
            },
        )
        .unwrap_or_else(|| server.finish(super::http::HttpEnd::Failed));
    }

    fn start_ws(
        &'static self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        driver: &Bound<'_, PyModule>,
        req: super::websocket::WsRequest,
    ) {
        let (app, server, waker) = (req.app, req.server.clone(), req.waker.clone());
        let watch = req.watch.clone();
        let scope = req.scope.clone();
        self.start_task(
            py,
            event_loop,
            driver,
            app,
            &scope,
            "a WebSocket",
            &watch,
            &waker,
            || Ok(Py::new(py, super::websocket::WsExchange::new(py, req)?)?.into_any()),
        )
        .unwrap_or_else(|| server.finish(super::http::HttpEnd::Failed));
    }

    /// Starts the app's task for one connection, whose exchange `exchange` makes; None (logged)
    /// when it could not start. The task's first step checks that the server has not given up on
    /// the request meanwhile (then the app never runs) and sets the request's id for the
    /// log lines of the app's coroutines and of the tasks they spawn (a context variable).
    #[allow(clippy::too_many_arguments)]
    fn start_task(
        &'static self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        driver: &Bound<'_, PyModule>,
        app_index: usize,
        scope: &super::scope::HttpScope,
        what: &str,
        watch: &Arc<TaskWatch>,
        waker: &Arc<super::waker::Waker>,
        exchange: impl FnOnce() -> PyResult<Py<PyAny>>,
    ) -> Option<()> {
        let started = (|| -> PyResult<()> {
            let app = crate::app::Apps::get(app_index).ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("the app is not loaded")
            })?;
            let state = LIFESPANS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|l| l.states.get(&app_index).map(|s| s.clone_ref(py)));
            let scope_dict = scope.to_dict(py, state.as_ref().map(|s| s.bind(py)))?;
            let exchange = exchange()?;
            let hooks = TaskHooks {
                event_loop: self,
                watch: watch.clone(),
                waker: waker.clone(),
            };
            let request_id = crate::logging_bridge::context_value(
                py,
                String::from_utf8_lossy(scope.request_id()).into_owned(),
                scope.log_route,
            )?;
            let task = driver.call_method1(
                pyo3::intern!(py, "start_http"),
                (
                    event_loop,
                    app.bind(py),
                    scope_dict,
                    exchange,
                    hooks,
                    crate::logging_bridge::request_id_var(py)?,
                    request_id.clone_ref(py),
                ),
            )?;
            watch.set_task(task.unbind(), request_id);
            Ok(())
        })();
        match started {
            Ok(()) => Some(()),
            Err(e) => {
                self.tasks.fetch_sub(1, Ordering::AcqRel);
                if self.start(watch) {
                    crate::metrics::loop_task_done(false);
                }
                tracing::error!(target: "asgi", "cannot start {what}: {}", crate::traceback::format(py, &e));
                None
            }
        }
    }

    /// Runs `f` on the loop's thread; its answer comes on the receiver, for the caller to wait
    /// for as it must.
    fn call_later<R: Send + 'static>(
        &self,
        f: impl FnOnce(Python<'_>, &Bound<'_, PyAny>, &Bound<'_, PyModule>, mpsc::Sender<R>)
            + Send
            + 'static,
    ) -> mpsc::Receiver<R> {
        let (tx, rx) = mpsc::channel();
        self.post(Item::Call(Box::new(move |py, l, d| f(py, l, d, tx))));
        rx
    }
}

impl WakeQueue for AsgiLoop {
    fn post_wake(&self, waker: Arc<Waker>) {
        self.post(Item::Wake(waker));
    }
}

impl LoopThread for AsgiLoop {
    fn loop_object<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.loop_object.get().map(|l| l.bind(py).clone())
    }

    fn thread_ident(&self) -> Option<u64> {
        Some(self.thread_ident.load(Ordering::Acquire)).filter(|&i| i != 0)
    }

    fn note_interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
    }

    fn turns(&self) -> u64 {
        self.turns.load(Ordering::Acquire)
    }

    fn ping(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd; a full counter still leaves
        // the loop woken.
        unsafe { libc::write(self.efd, (&one as *const u64).cast(), 8) };
    }

    fn runs_for(
        &self,
        py: Python<'_>,
        running: &Bound<'_, PyAny>,
        request_id: &Bound<'_, PyAny>,
    ) -> bool {
        let (Some(driver), Some(ident)) = (self.driver_module.get(), self.thread_ident()) else {
            return false;
        };
        crate::logging_bridge::request_id_var(py)
            .and_then(|var| {
                driver
                    .bind(py)
                    .call_method1("runs_for", (ident, running, var, request_id))?
                    .extract::<bool>()
            })
            .unwrap_or(false)
    }
}
