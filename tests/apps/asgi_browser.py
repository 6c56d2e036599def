"""A page whose script drives a real browser's WebSocket, EventSource and fetch() against this
app (raw ASGI 3), then posts what it saw to /result; the app keeps what it saw of the same
exchanges (the close codes the browser sent, the Last-Event-ID it reconnected with)."""
import asyncio
import hashlib
import json
import pathlib

PAGE = (pathlib.Path(__file__).parent / "asgi_browser.html").read_bytes()
SEEN = {"browser": None, "closed": {}, "last_event_ids": [], "upload_pieces": 0, "held": {}}
RELEASES = {}


def release(key):
    return RELEASES.setdefault(key, asyncio.Event())


async def respond(send, body, content_type=b"application/json", status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive, keep=False):
    """The body's SHA-256, size and number of pieces, and the body itself when kept."""
    digest, size, pieces, kept = hashlib.sha256(), 0, 0, []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the browser left during its upload")
        piece = message.get("body", b"")
        digest.update(piece)
        size += len(piece)
        pieces += 1
        if keep:
            kept.append(piece)
        if not message.get("more_body"):
            return digest, size, pieces, b"".join(kept)


async def http(scope, receive, send, path):
    if path == "/page":
        # What the browser's request said of the host: over HTTP/2 it sends `:authority`
        # before `:path`, and nginx makes a Host header of it.
        SEEN["page_host"] = [v.decode(errors="replace") for k, v in scope["headers"] if k == b"host"]
        await respond(send, PAGE, b"text/html; charset=utf-8")
    elif path == "/result":
        SEEN["browser"] = json.loads((await read_body(receive, keep=True))[3])
        await respond(send, b"{}")
    elif path == "/seen":
        await respond(send, json.dumps(SEEN).encode())
    elif path == "/release":
        release(scope["query_string"].decode()).set()
        await respond(send, b"{}")
    elif path == "/upload":
        digest, size, pieces, _ = await read_body(receive)
        SEEN["upload_pieces"] = pieces
        await respond(send, json.dumps({"sha256": digest.hexdigest(), "size": size}).encode())
    elif path == "/stream":
        # The second piece waits until the browser says it has the first: it can only say so if
        # the first piece reached it alone, ahead of the end of the response.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"x-content-type-options", b"nosniff")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await release("stream").wait()
        await send({"type": "http.response.body", "body": b"second"})
    elif path == "/sse":
        # The first connection ends after one event; EventSource reconnects after `retry` and
        # says which event it had last.
        last = dict(scope["headers"]).get(b"last-event-id")
        SEEN["last_event_ids"].append(last.decode() if last is not None else None)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]})
        if last is None:
            await send({"type": "http.response.body", "body": b"retry: 100\nid: 1\ndata: one\n\n"})
            return
        await send({"type": "http.response.body", "body": b"id: 2\ndata: two\n\n", "more_body": True})
        # Held open, as an event stream is, until the browser closes it.
        while (await receive())["type"] != "http.disconnect":
            pass
        SEEN["sse_disconnect"] = True
    elif path == "/sse-held":
        # One event, then held open until the browser closes it; the open ones are counted.
        key = scope["query_string"].decode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]})
        # Counted before its event leaves, so that a browser that has every event finds it counted.
        SEEN["held"][key] = {"http_version": scope["http_version"], "open": True}
        await send({"type": "http.response.body", "body": f"data: held {key}\n\n".encode(), "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        SEEN["held"][key]["open"] = False
    elif path == "/held":
        await respond(send, json.dumps({"open": sum(h["open"] for h in SEEN["held"].values())}).encode())
    else:
        await respond(send, b"not here", b"text/plain", 404)


async def websocket(scope, receive, send, path):
    assert (await receive())["type"] == "websocket.connect"
    if path == "/ws/deny":
        await send({"type": "websocket.close"})
        return
    offered = scope["subprotocols"]
    await send({"type": "websocket.accept", "subprotocol": offered[-1] if offered else None})
    if path == "/ws/server-closes":
        await send({"type": "websocket.send", "text": "bye soon"})
        await send({"type": "websocket.close", "code": 4002, "reason": "the server says bye"})
        message = await receive()
        SEEN["closed"]["server-closes"] = [message["type"], message["code"]]
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            SEEN["closed"]["echo"] = [message["code"], message.get("reason", "")]
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"][len(scope["root_path"]):]
    if scope["type"] == "http":
        await http(scope, receive, send, path)
    else:
        await websocket(scope, receive, send, path)
