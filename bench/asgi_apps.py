"""The ASGI bench workloads (bench/asgi.py, bench/asgi_idle.py): one ASGI 3 callable, `app`, the
same module under every server, routed on the scope's path, so each server pays the same routing.

Raw ASGI for what measures the server (hello, JSON, echo, the stream, the WebSocket echo), and a
FastAPI route with a pydantic model for what a real app costs. The idle routes hold connections
open for bench/asgi_idle.py: each registers its `send`, and `POST /broadcast` sends one message to
every connection held.
"""
import json

import pydantic
from fastapi import FastAPI

HELLO = b"Hello, world!"
CHUNK = b"\xab" * 65536          # the stream: 16 chunks of 64 KiB = 1 MiB
STREAM_CHUNKS = 16
STREAM_SIZE = len(CHUNK) * STREAM_CHUNKS
JSON_BODY = json.dumps({"message": "Hello, World!", "items": list(range(10))}).encode()


async def start(send, status=200, content_type=b"text/plain", length=None):
    headers = [(b"content-type", content_type)]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def hello(scope, receive, send):
    await start(send, length=len(HELLO))
    await send({"type": "http.response.body", "body": HELLO})


async def json_route(scope, receive, send):
    body = json.dumps({"message": "Hello, World!", "items": list(range(10))}).encode()
    await start(send, content_type=b"application/json", length=len(body))
    await send({"type": "http.response.body", "body": body})


async def echo(scope, receive, send):
    pieces = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        pieces.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(pieces)
    await start(send, content_type=b"application/octet-stream", length=len(body))
    await send({"type": "http.response.body", "body": body})


async def stream(scope, receive, send):
    await start(send, content_type=b"application/octet-stream", length=STREAM_SIZE)
    for _ in range(STREAM_CHUNKS - 1):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": CHUNK})


async def ws_echo(scope, receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


# --- idle connections (bench/asgi_idle.py) ----------------------------------------------------

HELD = {}     # id -> (kind, send) of every connection held open


async def ws_idle(scope, receive, send):
    """Accepts, says hello, then waits for the client to go; /broadcast sends it `tick`."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "hello"})
    key = object()
    HELD[key] = ("ws", send)
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        del HELD[key]


async def sse_idle(scope, receive, send):
    """A server-sent-events stream: one event at once, then one per /broadcast until the client
    goes (receive() returns http.disconnect)."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]})
    await send({"type": "http.response.body", "body": b"data: hello\n\n", "more_body": True})
    key = object()
    HELD[key] = ("sse", send)
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        del HELD[key]


async def broadcast(scope, receive, send):
    """Sends `tick` to every held connection; answers how many of each kind got it."""
    counts = {"ws": 0, "sse": 0}
    for kind, peer in list(HELD.values()):
        try:
            if kind == "ws":
                await peer({"type": "websocket.send", "text": "tick"})
            else:
                await peer({"type": "http.response.body", "body": b"data: tick\n\n", "more_body": True})
            counts[kind] += 1
        except Exception:       # a client that went meanwhile
            pass
    body = json.dumps(counts).encode()
    await start(send, content_type=b"application/json", length=len(body))
    await send({"type": "http.response.body", "body": body})


# --- FastAPI: a route with a pydantic model in and out -----------------------------------------

class Item(pydantic.BaseModel):
    name: str
    price: float
    tags: list[str] = []


class Priced(pydantic.BaseModel):
    name: str
    price: float
    tags: list[str]
    total: float


api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@api.post("/fastapi/items/{item_id}")
async def price_item(item_id: int, item: Item, quantity: int = 1) -> Priced:
    return Priced(name=f"{item.name}-{item_id}", price=item.price, tags=item.tags, total=item.price * quantity)


FASTAPI_REQUEST = json.dumps({"name": "widget", "price": 2.5, "tags": ["a", "b"]}).encode()
FASTAPI_PATH = "/fastapi/items/7?quantity=3"
FASTAPI_ANSWER = {"name": "widget-7", "price": 2.5, "tags": ["a", "b"], "total": 7.5}

HTTP = {"/hello": hello, "/json": json_route, "/echo": echo, "/stream": stream, "/sse": sse_idle,
        "/broadcast": broadcast}
WS = {"/ws": ws_echo, "/ws-idle": ws_idle}


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    """The one callable every server runs."""
    kind = scope["type"]
    if kind == "http":
        route = HTTP.get(scope["path"])
        if route is None and scope["path"].startswith("/fastapi/"):
            route = api
    elif kind == "websocket":
        route = WS.get(scope["path"])
        if route is None:
            await send({"type": "websocket.close"})
            return
    else:
        return await lifespan(scope, receive, send)
    if route is None:
        await start(send, status=404, length=0)
        await send({"type": "http.response.body", "body": b""})
        return
    await route(scope, receive, send)
