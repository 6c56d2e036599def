"""ASGI test app for the limits (raw ASGI 3): tasks that await too long, spin without awaiting
(one catching every Exception), stream and then hang, block the event loop with a blocking call
(one a wait that nobody ends), log from their coroutines and
from tasks they spawn; a WebSocket that stays open; what the app saw, at /stats."""
import asyncio
import concurrent.futures
import json
import logging
import time

STATS = {"ran": [], "cancelled": [], "interrupted": [], "disconnected": [], "late_read": [],
         "swallowed": [], "exited": []}
log = logging.getLogger("limits.app")


async def respond(send, body, status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def busy_until(until):
    # In a function of its own: an interrupt lands in it, inside the caller's try (Python 3.13
    # may raise one in a loop's own jump, outside a try around the loop's body).
    while time.monotonic() < until:
        pass


async def waits_for_ever():
    await asyncio.sleep(3600)


async def spawned_logger(token):
    await asyncio.sleep(0)
    log.warning("from a spawned task %s", token)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        raise ValueError("no lifespan")
    path = scope["path"][len(scope["root_path"]):]
    query = scope["query_string"].decode()
    if scope["type"] == "websocket":
        STATS["ran"].append(f"ws:{path}?{query}")
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if path == "/stats":
        return await respond(send, json.dumps(STATS).encode())
    STATS["ran"].append(f"{path}?{query}")
    try:
        if path == "/sleep":
            await waits_for_ever()
        elif path == "/spin":
            n = 0
            while True:
                n += 1
        elif path == "/spin-in-child":
            # A framework's middleware runs the endpoint in a task of its own (Starlette's HTTP
            # middleware, Django's handler): the spin is that task's, not the request's (20 s at
            # most, so that a server that cannot interrupt it is not held for ever).
            async def endpoint():
                until = time.monotonic() + 20
                while time.monotonic() < until:
                    pass
            await asyncio.create_task(endpoint())
        elif path == "/spin-swallow":
            # A retry loop that takes every Exception, its deadline's TimeoutError among them,
            # and keeps the loop (30 s at most, so that a server that cannot stop it is not
            # held for ever).
            until = time.monotonic() + 30
            while time.monotonic() < until:
                try:
                    busy_until(until)
                except Exception as e:
                    STATS["swallowed"].append(f"{path}?{query}: {type(e).__name__}")
        elif path == "/cancel-ignored":
            # Takes its cancellation and works on for 11 s, in pieces of 50 ms, awaiting between
            # them: the loop turns all along, and serves others.
            try:
                await waits_for_ever()
            except asyncio.CancelledError:
                until = time.monotonic() + 11
                while time.monotonic() < until:
                    busy_until(time.monotonic() + 0.05)
                    await asyncio.sleep(0)
                STATS["ran"].append(f"{path}?{query}: done")
        elif path == "/stream-hang":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"first piece\n", "more_body": True})
            await waits_for_ever()
        elif path == "/block":
            # A blocking call in async code: the whole event loop waits.
            time.sleep(float(query or 1))
            await respond(send, b"unblocked")
        elif path == "/wait-for-ever":
            # A synchronous wait in async code with no timeout, which only another thread's
            # notify would end (a Future's result() from a thread pool that never finishes it):
            # the loop's thread waits in threading.Condition.wait.
            concurrent.futures.Future().result()
        elif path == "/read-late":
            # Holds the loop past the request's deadline (the interruption caught), then reads
            # the body nginx read whole: the server has ended the request and freed it.
            try:
                time.sleep(1.5)
            except TimeoutError:
                pass
            try:
                message = await receive()
                STATS["late_read"].append(f"{query}: {message['type']} {len(message.get('body', b''))}")
            except Exception as e:
                STATS["late_read"].append(f"{query}: {type(e).__name__}: {e}")
        elif path == "/until-gone":
            while (await receive())["type"] != "http.disconnect":
                pass
            STATS["disconnected"].append(f"{path}?{query}")
        elif path == "/log":
            log.warning("from the handler %s", query)
            await asyncio.sleep(0.01)
            await asyncio.create_task(spawned_logger(query))
            await respond(send, b"logged")
        else:
            await respond(send, f"{path}?{query}".encode())
    except asyncio.CancelledError:
        STATS["cancelled"].append(f"{path}?{query}")
        raise
    except TimeoutError:
        STATS["interrupted"].append(f"{path}?{query}")
        raise
    except BaseException as e:
        if type(e).__name__ == "TimeoutExit":
            STATS["exited"].append(f"{path}?{query}")
        raise
