"""The event loop's Python side: one task per HTTP request, one lifespan task per app.

`receive` and `send` never wait on the server: the exchange (Rust) says at once whether it has a
message or room; when not, the coroutine parks a future that the server's wake-up resolves."""
import asyncio
import functools
import os
import sys
import traceback


async def _http(loop, app, scope, ex, hooks, request_id_var, request_id):
    if not hooks.begin():
        return  # the server answered it while it waited for the loop (a timeout)
    # The task runs in its own copy of the context: tasks the app spawns copy this one, so
    # their log lines carry the request's id too.
    request_id_var.set(request_id)

    async def receive():
        while True:
            message = ex.receive_now()
            if message is not None:
                return message
            waiter = loop.create_future()
            ex.park_receive(waiter)
            try:
                await waiter
            except BaseException:
                ex.stop_listening()
                raise

    async def send(message):
        while True:
            taken = ex.send_now(message)
            if taken:
                return
            if taken is None:
                # Dropped: its client went while the app listened for that in receive(). The
                # turn of the loop lets the listening task, told now, cancel this one (whose
                # clean-up then runs) before a send raises.
                await asyncio.sleep(0)
                return
            waiter = loop.create_future()
            ex.park(waiter)
            await waiter

    try:
        await app(scope, receive, send)
    except BaseException as e:  # sys.exit() and cancellation too: a 500, never the loop's end
        ex.ended(e)
    else:
        ex.ended(None)


# The connections' tasks still running, with their exchange and hooks: the loop's death and the
# worker's exit reach them here (an app's task factory may wrap or rename them, as Sentry's does).
_CONNECTIONS = {}


def start_http(loop, app, scope, ex, hooks, request_id_var, request_id):
    """Starts the task of one connection; `hooks` is called when it ends, however it ends."""
    # A name given: asyncio would format one ("Task-N") for every request.
    task = loop.create_task(_http(loop, app, scope, ex, hooks, request_id_var, request_id), name="asgi")
    _CONNECTIONS[task] = (ex, hooks)
    task.add_done_callback(_ended)
    return task


def _ended(task):
    """The task's done callback (one per task: each is a round trip through the loop)."""
    _, hooks = _CONNECTIONS.pop(task)
    hooks(task)


_HANDLE_RUN = asyncio.events.Handle._run.__code__


def runs_for(ident, task, var, value):
    """Whether `task`, which the loop's thread (`ident`) runs now, runs in a context where `var`
    is `value`: the request's own task set it, and the tasks it spawns copied it (a framework
    runs the endpoint in one: Starlette's HTTP middleware, Django). Before Python 3.12 a task's
    context is found in the loop's handle that runs its step (asyncio's own loop; uvloop's
    handles have no Python frame: the request's own task only). The caller checks afterwards, in
    C, that the loop still runs `task`."""
    get_context = getattr(task, "get_context", None)
    context = None
    if get_context is not None:
        context = get_context()
    else:
        frame = sys._current_frames().get(ident)
        while frame is not None:
            if frame.f_code is _HANDLE_RUN:
                handle = frame.f_locals.get("self")
                if getattr(getattr(handle, "_callback", None), "__self__", None) is task:
                    context = getattr(handle, "_context", None)
                break
            frame = frame.f_back
    return context is not None and context.get(var) is value


def await_stack(task):
    """Where a suspended task waits: the frames of its chain of awaits, outermost first (what
    task.print_stack() shows, which stops at the outermost coroutine), without this driver's."""
    frames = []
    awaitable = task.get_coro()
    while awaitable is not None:
        frame = None
        for name in ("cr_frame", "gi_frame", "ag_frame"):
            frame = getattr(awaitable, name, None)
            if frame is not None:
                break
        if frame is not None and frame.f_globals is not globals():
            frames.append((frame, frame.f_lineno))
        following = None
        for name in ("cr_await", "gi_yieldfrom", "ag_await"):
            following = getattr(awaitable, name, None)
            if following is not None:
                break
        awaitable = following
    if not frames:
        return "(no Python frame: the task has not started or has ended)"
    return "".join(traceback.StackSummary.extract(frames).format()).rstrip()


class Lifespan:
    """The lifespan protocol of one app. `report(phase, outcome, text)` is called with phase
    'startup' or 'shutdown' and outcome 'ok', 'failed', 'unsupported' (the app raised before
    asking for the startup) or 'abandoned' (it asked for the startup, then raised or returned
    without answering it: the ASGI lifespan spec has the server carry on without lifespan
    events; only lifespan.startup.failed stops it)."""

    def __init__(self, loop, app, state, report):
        self.loop, self.app, self.state, self.report = loop, app, state, report
        self.inbox = asyncio.Queue()
        self.received = False
        self.reported = {}
        self.phase = "startup"
        self.task = None

    def _report(self, phase, outcome, text=""):
        if phase not in self.reported:
            self.reported[phase] = outcome
            self.report(phase, outcome, text)

    def begin(self):
        self.inbox.put_nowait({"type": "lifespan.startup"})
        self.task = self.loop.create_task(self.main())

    def shutdown(self):
        if (self.task is None or self.task.done() or "startup" not in self.reported
                or "shutdown" in self.reported):
            self.report("shutdown", "ok", "")
            return
        self.phase = "shutdown"
        self.inbox.put_nowait({"type": "lifespan.shutdown"})

    async def receive(self):
        self.received = True
        return await self.inbox.get()

    async def send(self, message):
        kind = message.get("type") if hasattr(message, "get") else None
        if kind == "lifespan.startup.complete" and self.phase == "startup":
            self._report("startup", "ok")
        elif kind == "lifespan.startup.failed" and self.phase == "startup":
            self._report("startup", "failed", str(message.get("message", "")))
        elif kind == "lifespan.shutdown.complete" and self.phase == "shutdown":
            self._report("shutdown", "ok")
        elif kind == "lifespan.shutdown.failed" and self.phase == "shutdown":
            self._report("shutdown", "failed", str(message.get("message", "")))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in the lifespan {self.phase} phase")

    async def main(self):
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        try:
            await self.app(scope, self.receive, self.send)
        except GeneratorExit:
            raise  # the task was collected unfinished (its loop died or closed): nothing ran
        except BaseException as e:
            text = "".join(traceback.format_exception(e)).rstrip()
            if "startup" not in self.reported:
                self._report("startup", "abandoned" if self.received else "unsupported", text)
            elif self.phase == "shutdown":
                self._report("shutdown", "failed", text)
            elif self.reported["startup"] == "ok":
                self.report("running", "failed", text)
            # else: re-raised after lifespan.startup.failed (Starlette), whose message said it.
        else:
            if "startup" not in self.reported:
                self._report("startup", "abandoned" if self.received else "unsupported",
                             "the lifespan coroutine returned without sending lifespan.startup.complete")
            elif self.phase == "shutdown":
                self._report("shutdown", "ok")


def leave_signals_to_the_server(loop):
    """An app's `loop.add_signal_handler()`, or `signal.signal()` for one of nginx's signals, on
    the server's loop (a graceful shutdown hook set in its lifespan startup, as under uvicorn,
    where the loop is the main thread's) installs nothing and says so in the error log, instead
    of raising (asyncio's RuntimeError, signal's ValueError: not the main thread), which ended
    the startup. The signals are nginx's: the lifespan shutdown runs at reload and quit. The
    configuration check's loop runs on its main thread, where `signal.signal()` would work: it
    is left alone there too, so that the check and the workers treat an app alike."""

    def add_signal_handler(sig, callback, *args):
        _not_installed("loop.add_signal_handler", sig, callback)

    def remove_signal_handler(sig):
        return False

    loop.add_signal_handler = add_signal_handler
    loop.remove_signal_handler = remove_signal_handler
    _SERVER_LOOPS.add(loop)
    _leave_signal_signal_to_the_server()
    return loop


# The server's loops (a worker's; the check's, one per ASGI app, closed once checked): a strong
# set, as uvloop's loop takes no weak reference.
_SERVER_LOOPS = set()


def _not_installed(call, sig, handler):
    import logging

    logging.getLogger("ngx_wsgi").warning(
        "an app called %s(%s, %s): the signals belong to the server, which runs the lifespan "
        "shutdown at reload and quit; no handler was installed",
        call, sig, getattr(handler, "__qualname__", repr(handler)))


def _leave_signal_signal_to_the_server():
    import signal

    original = signal.signal
    if getattr(original, "_ngx_wsgi_server_loops", False):
        return
    # nginx's own: a handler of the app's for them would take them from nginx, or never run.
    servers = {getattr(signal, name) for name in
               ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH")}

    @functools.wraps(original)
    def signal_signal(signalnum, handler):
        try:
            on_server_loop = asyncio.get_running_loop() in _SERVER_LOOPS
        except RuntimeError:
            on_server_loop = False
        if not on_server_loop or signalnum not in servers:
            return original(signalnum, handler)
        in_place = signal.getsignal(signalnum)
        if handler == in_place:
            # The app putting back what it was given: None for nginx's handler, which Python
            # did not install (and the real call would refuse).
            return in_place
        if not callable(handler) and handler not in (signal.SIG_DFL, signal.SIG_IGN):
            raise TypeError("signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a "
                            "callable object")
        _not_installed("signal.signal", signalnum, handler)
        return in_place

    signal_signal._ngx_wsgi_server_loops = True
    signal.signal = signal_signal


def check_lifespan(app, loop_factory, shutdown_within, progress, shutting_down):
    """The configuration check: the app's startup, then its shutdown, on a loop of its own.
    Returns None, or how the startup failed. The shutdown, which decides nothing here, is given
    `shutdown_within` seconds, as in the workers; one that takes longer is cancelled. As it
    begins, `shutting_down` is written to the `progress` descriptor: the parent then bounds it
    by its own timeout rather than the check's."""
    results = []
    loop = leave_signals_to_the_server(loop_factory())

    async def run():
        waiter = [loop.create_future()]

        def report(*r):
            results.append(r)
            if not waiter[0].done():
                waiter[0].set_result(None)

        lifespan = Lifespan(loop, app, {}, report)
        lifespan.begin()
        await waiter[0]
        if results[0][1] != "ok":
            return
        waiter[0] = loop.create_future()
        try:
            os.write(progress, shutting_down)
        except OSError:
            pass  # an app that closed the descriptor: its check is bounded as a whole then
        lifespan.shutdown()
        if len(results) < 2:
            await asyncio.wait([waiter[0]], timeout=shutdown_within)

    try:
        loop.run_until_complete(run())
        cancel_all(loop, 1.0)
    finally:
        loop.close()
    # Only the startup decides: a shutdown that fails is the workers' to log at their exit.
    for phase, outcome, text in results:
        if phase == "startup" and outcome == "failed":
            return f"lifespan {phase} failed: {text}"
    return None


def cancel_connections(loop):
    """At the worker's exit, past the shutdown timeout: cancels the connections' tasks still
    running, not the lifespan's or those the apps made."""
    for t in list(_CONNECTIONS):
        if not t.done():
            t.cancel()


def abandon(loop, error):
    """The loop died: the connections' tasks it can no longer run are ended in their servers'
    eyes with `error` (a 500, or a cut once the head left)."""
    for task in list(asyncio.all_tasks(loop)):
        # The loop's death was logged; each task left is not worth an entry of its own.
        try:
            task._log_destroy_pending = False
        except AttributeError:
            pass  # a task type of an app's own
    for task, (ex, hooks) in list(_CONNECTIONS.items()):
        del _CONNECTIONS[task]
        if task.done():
            # Ended (its exchange with it), but its done callbacks, scheduled, will never run.
            hooks(task)
            continue
        task.remove_done_callback(_ended)
        try:
            hooks.abandon(task, ex, error)
        except Exception:
            traceback.print_exc()  # one connection's failure must not leave the others waiting


def cancel_all(loop, within, hurried=None, hurried_within=0.1):
    """At the loop's end: cancels the tasks left (background work of apps), waiting `within`
    seconds at most for them to end; `hurried_within` once `hurried()` says a fast stop came
    meanwhile (the server's master kills the process soon after)."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if not tasks:
        return

    async def wait():
        end = loop.time() + within
        cut = hurried is None
        while True:
            pending = [t for t in tasks if not t.done()]
            left = end - loop.time()
            if not pending or left <= 0:
                return
            await asyncio.wait(pending, timeout=min(left, 0.05) if not cut else left)
            if not cut and hurried():
                cut = True
                end = min(end, loop.time() + hurried_within)

    waiting = wait()
    try:
        loop.run_until_complete(waiting)
    finally:
        waiting.close()  # unawaited when the loop could not run (it died)
