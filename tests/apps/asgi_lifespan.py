"""Lifespan behaviours: a startup that raises or returns after receiving the startup (the app
is then served without lifespan), one that fails with lifespan.startup.failed, one that fails
only when a marker file exists (so that the
configuration check passes and a later worker start fails), one that breaks the event loop
during its startup when marked, an app without lifespan, and a
startup or a shutdown that never finishes (one of them after a slow startup, one blocking the
loop), a shutdown that ends the process, and a lifespan that raises once its startup is done."""
import asyncio
import os
import signal
import time


async def respond(send, body):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def raises(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("the database is not there")
    await respond(send, b"served without lifespan")


async def returns(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        return
    await respond(send, b"served without lifespan")


async def reports_failure(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no configuration file"})
        return
    await respond(send, b"unreachable")


async def fails_when_marked(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        if os.path.exists(os.environ["NGX_WSGI_TEST_MARKS"] + "/fail-startup"):
            await send({"type": "lifespan.startup.failed", "message": "marked to fail"})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send, b"started")


async def breaks_the_loop_when_marked(scope, receive, send):
    # An Exception out of the loop's own code while the worker waits for the startup.
    if scope["type"] == "lifespan":
        await receive()
        if os.path.exists(os.environ["NGX_WSGI_TEST_MARKS"] + "/break-loop"):
            def broken():
                raise RuntimeError("the loop's internals are broken")
            asyncio.get_running_loop()._run_once = broken
            await asyncio.sleep(0)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send, b"started")


async def unsupported(scope, receive, send):
    assert scope["type"] == "http", "only http"
    await respond(send, b"no lifespan here")


async def shutdown_raises(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("could not flush the queue")
    await respond(send, b"up")


async def shutdown_exits(scope, receive, send):
    # Chainlit's server app: its shutdown ends the process, so that no AnyIO thread holds it.
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        os._exit(0)
    await respond(send, b"up")


async def sets_a_signal_handler(scope, receive, send):
    # A graceful-shutdown hook set in the startup, as apps written for uvicorn do, then the
    # state the app's requests need.
    if scope["type"] == "lifespan":
        await receive()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
        loop.remove_signal_handler(signal.SIGTERM)
        scope["state"]["db"] = "connected"
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send, scope["state"]["db"].encode())


async def sets_a_signal_signal_handler(scope, receive, send):
    # The same hook with signal.signal (Starlette and FastAPI lifespans): it returns the handler
    # it replaced, which the app keeps to put back.
    if scope["type"] == "lifespan":
        await receive()
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        scope["state"]["db"] = f"connected, previous handler {previous!r}"
        await send({"type": "lifespan.startup.complete"})
        await receive()
        signal.signal(signal.SIGTERM, previous)
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send, scope["state"]["db"].encode())


async def raises_after_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await asyncio.sleep(0)
        raise RuntimeError("the cache warmer died")
    await respond(send, b"up")


async def startup_hangs(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await asyncio.Event().wait()
    await respond(send, b"unreachable")


async def shutdown_hangs(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await asyncio.Event().wait()
    await respond(send, b"up")


async def slow_startup_then_shutdown_hangs(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await asyncio.sleep(0.5)  # connecting to a database
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await asyncio.Event().wait()
    await respond(send, b"up")


async def shutdown_blocks_the_loop(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        time.sleep(3600)  # a synchronous client's close that never returns
    await respond(send, b"up")


_KEPT = set()


async def _cleans_up_slowly(seconds):
    """Waits for ever; cancelled, marks that it cleans up, then takes `seconds` to (closing a
    connection pool, flushing a buffer to a slow service)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        marks = os.environ.get("NGX_WSGI_TEST_MARKS")
        if marks:
            open(f"{marks}/cleaning-up-{os.getpid()}", "w").close()
        await asyncio.sleep(seconds)
        raise


async def _start_a_slow_cleanup(receive, send, seconds):
    await receive()
    _KEPT.add(asyncio.get_running_loop().create_task(_cleans_up_slowly(seconds)))
    await send({"type": "lifespan.startup.complete"})


async def shutdown_hangs_and_a_task_cleans_up(scope, receive, send):
    # A shutdown that uses all its time, then a background task whose cancellation takes a
    # moment: the loop's end is slow, not stuck.
    if scope["type"] == "lifespan":
        await _start_a_slow_cleanup(receive, send, 0.8)
        await receive()
        await asyncio.Event().wait()
    await respond(send, b"up")


async def a_task_cleans_up_slowly(scope, receive, send):
    # A background task whose cancellation at the loop's end takes two seconds; the lifespan
    # shutdown itself is quick.
    if scope["type"] == "lifespan":
        await _start_a_slow_cleanup(receive, send, 2)
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send, b"up")


def _starlette_failing_startup():
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette

    @asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("no database at startup")
        yield

    return Starlette(lifespan=lifespan)


# Starlette answers lifespan.startup.failed with the traceback, then raises again.
starlette_fails = _starlette_failing_startup()
