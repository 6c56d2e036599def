"""Many idle connections on one worker (tests/test_asgi_scale.py): WebSockets and server-sent-event
streams that say hello at once and then wait; `POST /broadcast` sends `tick` to every one held;
`GET /held` counts them; `GET /hello` is the short request answered meanwhile."""
import json

HELD = {}     # key -> (kind, send) of every connection held open


async def respond(send, body, content_type=b"text/plain"):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        raise ValueError("no lifespan")
    key = object()
    path = scope["path"]
    if scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hello"})
        HELD[key] = ("ws", send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            del HELD[key]
    elif path == "/sse":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": b"data: hello\n\n", "more_body": True})
        HELD[key] = ("sse", send)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            del HELD[key]
    elif path == "/broadcast":
        counts = {"ws": 0, "sse": 0}
        for kind, peer in list(HELD.values()):
            if kind == "ws":
                await peer({"type": "websocket.send", "text": "tick"})
            else:
                await peer({"type": "http.response.body", "body": b"data: tick\n\n", "more_body": True})
            counts[kind] += 1
        await respond(send, json.dumps(counts).encode(), b"application/json")
    elif path == "/held":
        counts = {"ws": 0, "sse": 0}
        for kind, _ in HELD.values():
            counts[kind] += 1
        await respond(send, json.dumps(counts).encode(), b"application/json")
    else:
        await respond(send, b"Hello, world!")
