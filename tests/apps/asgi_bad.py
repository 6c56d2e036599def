"""A corpus of misbehaving ASGI apps, one per path: each must give a 500 (nothing sent yet) or a
cut connection (something sent), a traceback or a reason in the error log, and a worker that
keeps serving."""
import asyncio
import json
import sys

# What the sends of the tasks an app left behind raised, by path.
ORPHANS = {}
_KEPT = set()


async def start(send, length=None):
    headers = [(b"content-type", b"text/plain")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise ValueError(f"no {scope['type']} here")  # no lifespan support: still served
    route = scope["path"]
    if route == "/ok":
        await start(send, 2)
        await send({"type": "http.response.body", "body": b"ok"})
    elif route == "/raise-before-start":
        raise RuntimeError("boom before start")
    elif route == "/raise-after-start":
        await start(send)
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after start")
    elif route == "/raise-after-complete":
        await start(send, 4)
        await send({"type": "http.response.body", "body": b"done"})
        raise RuntimeError("boom after complete")
    elif route == "/no-response":
        return
    elif route == "/start-only":
        await start(send)
    elif route == "/start-then-return":
        await start(send)
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    elif route == "/never-receive":
        await start(send, 7)
        await send({"type": "http.response.body", "body": b"ignored"})
    elif route == "/send-after-complete":
        await start(send, 4)
        await send({"type": "http.response.body", "body": b"done"})
        await send({"type": "http.response.body", "body": b"more"})
    elif route == "/wrong-type":
        await send({"type": "http.response.bogus"})
    elif route == "/not-a-dict":
        await send("http.response.start")
    elif route == "/status-str":
        await send({"type": "http.response.start", "status": "200", "headers": []})
    elif route == "/status-100":
        await send({"type": "http.response.start", "status": 100, "headers": []})
    elif route == "/header-crlf":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-a", b"1\r\nSet-Cookie: evil=1")]})
    elif route == "/header-str":
        await send({"type": "http.response.start", "status": 200, "headers": [("x-a", "1")]})
    elif route == "/body-str":
        await start(send)
        await send({"type": "http.response.body", "body": "text"})
    elif route == "/body-before-start":
        await send({"type": "http.response.body", "body": b"x"})
    elif route == "/double-start":
        await start(send)
        await start(send)
    elif route == "/trailers-early":
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.trailers", "headers": []})
    elif route == "/too-long":
        await start(send, 3)
        await send({"type": "http.response.body", "body": b"12345"})
    elif route == "/too-short":
        await start(send, 10)
        await send({"type": "http.response.body", "body": b"123"})
    elif route in ("/orphan-start", "/orphan-body"):
        # Returns, leaving a task to answer (it sends once the server has ended the response).
        if route == "/orphan-body":
            await start(send)
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})

        async def late():
            await asyncio.sleep(0.2)
            try:
                if route == "/orphan-start":
                    await start(send)
                await send({"type": "http.response.body", "body": b"late"})
                ORPHANS[route] = "sent"
            except Exception as e:
                ORPHANS[route] = f"{type(e).__name__}: {e}"
        _KEPT.add(asyncio.get_running_loop().create_task(late()))
    elif route == "/orphans":
        body = json.dumps(ORPHANS).encode()
        await start(send, len(body))
        await send({"type": "http.response.body", "body": body})
    elif route == "/sys-exit":
        sys.exit(3)
    elif route == "/cancelled":
        raise asyncio.CancelledError()
    else:
        await start(send, 9)
        await send({"type": "http.response.body", "body": b"not found"})
