"""Streams whose app listens for its client's going in a task of its own beside the one that
sends: Django's ASGIHandler (/django/...) and Starlette's StreamingResponse under ASGI before 2.4
(/starlette/...). Their clean-up must run when the client goes, as under uvicorn; GET /events
lists what ran (`KEY finally`: the stream's own clean-up, `KEY cleaned up`: the framework's)."""
import asyncio
import json

EVENTS = []


class Aborted(Exception):
    """Django's RequestAborted."""


async def listen_for_disconnect(receive):
    while (await receive())["type"] != "http.disconnect":
        pass
    raise Aborted


async def stream(send, content_type, key):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
    piece = b"data: " + b"x" * 65536 + b"\n\n"
    try:
        while True:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
    finally:
        EVENTS.append(f"{key} finally")


async def django_like(scope, receive, send, key):
    # ASGIHandler.handle, in short: the body first, then a listener beside the response's task;
    # the response is closed (request_finished sent) only when that task ended cancelled.
    await receive()
    content_type = b"text/event-stream" if "sse" in key else b"text/plain"
    tasks = [asyncio.create_task(listen_for_disconnect(receive)),
             asyncio.create_task(stream(send, content_type, key))]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task.done():
            try:
                task.result()
            except Aborted:
                pass
        else:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
    try:
        tasks[1].result()
    except asyncio.CancelledError:
        EVENTS.append(f"{key} cleaned up")


async def starlette(scope, receive, send, key):
    from starlette.responses import StreamingResponse

    async def events():
        try:
            while True:
                yield b"data: x\n\n"
                await asyncio.sleep(0.01)
        finally:
            EVENTS.append(f"{key} finally")

    await StreamingResponse(events(), media_type="text/event-stream")(scope, receive, send)
    EVENTS.append(f"{key} cleaned up")


RELEASES = {}


def released(key):
    return RELEASES.setdefault(key, asyncio.Event())


async def poller(scope, receive, send, key):
    # One task that looked for a disconnect with a timeout around receive() (each wait
    # cancelled), then sends once told to (its client gone by then): how many sends it made
    # before one raised. It listens no more: the first raises.
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    for _ in range(5):
        try:
            await asyncio.wait_for(receive(), 0.01)
        except asyncio.TimeoutError:
            pass
    EVENTS.append(f"{key} polled")
    await released(key).wait()
    sent = 0
    try:
        while sent < 100:
            await send({"type": "http.response.body", "body": b"more", "more_body": True})
            sent += 1
    except OSError:
        pass
    EVENTS.append(f"{key} sent {sent}")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    _, kind, key = scope["path"].split("/", 2)
    if kind == "release":
        released(key).set()
        kind = "events"
    if kind == "poller":
        await poller(scope, receive, send, key)
    elif kind == "events":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(EVENTS).encode()})
    elif kind == "django":
        await django_like(scope, receive, send, key)
    else:
        await starlette(scope, receive, send, key)
