"""WebSocket test app (raw ASGI 3): echo, subprotocols and headers on accept, denials, closes
from the app, failures before and after the accept, an accept or a close before reading the
connect, a socket held until the client or the
server goes (its close code is recorded)."""
import asyncio
import json

STATS = {"closed": {}, "closed-again": {}, "received": {}, "cancelled": [], "late_accept": {}, "seen": [], "after_close": {},
         "started": [], "subscriptions": {}}
RELEASES = {}


def release(key):
    return RELEASES.setdefault(key, asyncio.Event())


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        raise ValueError("no lifespan")
    path = scope["path"][len(scope["root_path"]):]
    if path == "/seen":
        # A mirror's subrequest (nginx drops its response): which scope it was given. Were it a
        # WebSocket's, its accept and message would go to the client's connection.
        STATS["seen"].append(f"{scope['type']} {scope['query_string'].decode()}")
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "from the mirror"})
            await receive()
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["type"] == "http":
        if path == "/release":
            release(scope["query_string"].decode()).set()
        body = json.dumps(STATS).encode() if path == "/stats" else json.dumps(
            {k: v for k, v in scope.items() if k in ("type", "scheme")}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    key = scope["query_string"].decode()
    STATS["started"].append(key)
    if path == "/unread-close":
        # Starlette's router answers a path it has no route for like this: close, unread.
        await send({"type": "websocket.close"})
        STATS["received"][key] = [(await receive())["type"], (await receive())["type"]]
        return
    if path == "/unread-accept":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": (await receive())["type"]})
        await receive()
        return
    assert (await receive())["type"] == "websocket.connect"
    if path == "/echo":
        sub = scope["subprotocols"][0] if scope["subprotocols"] else None
        # Headers as the spec writes them ([name, value] lists), a value in a bytearray.
        # A Content-Length (a middleware that sets one on every response) has no place on a 101.
        await send({"type": "websocket.accept", "subprotocol": sub,
                    "headers": [[b"x-accepted", bytearray(b"yes")], [b"content-length", b"0"]]})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                STATS["closed"][key] = [message["code"], message.get("reason", "")]
                # Asked again (a framework's cleanup that reads once more): the same answer.
                again = await receive()
                STATS["closed-again"][key] = [again["type"], again["code"], again.get("reason", "")]
                return
            if message.get("text") == "scope":
                info = {k: v for k, v in scope.items() if k in ("type", "scheme", "path", "root_path", "subprotocols", "http_version")}
                await send({"type": "websocket.send", "text": json.dumps(info)})
            elif message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                # A buffer, as an app slicing what it received sends it.
                await send({"type": "websocket.send", "bytes": memoryview(message["bytes"])})
    elif path == "/deny":
        await send({"type": "websocket.close"})
        # After a denial the connection is over for the app too.
        message = await receive()
        STATS["closed"][key] = [message["type"], message["code"]]
    elif path == "/deny-custom":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"6")]})
        await send({"type": "websocket.http.response.body", "body": b"nope!\n"})
        message = await receive()
        STATS["closed"][key] = [message["type"], message["code"]]
    elif path == "/return-without-accept":
        return
    elif path == "/app-closes":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bye"})
        await send({"type": "websocket.close", "code": 4001, "reason": "go away"})
        message = await receive()
        STATS["closed"][key] = [message["code"], message.get("reason", "")]
    elif path == "/burst-then-close":
        # KEY is "NAME&N": N messages of 16 KiB, at once, then the close.
        n = int(key.partition("&")[2])
        await send({"type": "websocket.accept"})
        for i in range(n):
            await send({"type": "websocket.send", "bytes": bytes([i]) * 16384})
        await send({"type": "websocket.close", "code": 1000, "reason": "all sent"})
        message = await receive()
        STATS["closed"][key] = [message["code"], message.get("reason", "")]
    elif path == "/unoffered-subprotocol":
        await send({"type": "websocket.accept", "subprotocol": "graphql-ws"})
    elif path == "/raise-before-accept":
        raise RuntimeError("refusing by raising")
    elif path == "/accept-with-extensions":
        # Which extensions the connection speaks is the server's to say.
        await send({"type": "websocket.accept",
                    "headers": [(b"Sec-WebSocket-Extensions", b"permessage-deflate")]})
    elif path == "/raise-after-accept":
        await send({"type": "websocket.accept"})
        raise RuntimeError("broken after the accept")
    elif path == "/hold":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "held"})
        message = await receive()
        STATS["closed"][key] = [message["code"], message.get("reason", "")]
    elif path == "/accept-when":
        # Accepts once the file named by the query exists (a slow lookup before the accept).
        import os
        STATS["received"][key] = "waiting"
        while not os.path.exists(key):
            await asyncio.sleep(0.05)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "held"})
        message = await receive()
        STATS["closed"][key] = [message["code"], message.get("reason", "")]
    elif path == "/deaf":
        # Accepts, then never reads: it does not learn that the connection closed.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "held"})
        await asyncio.sleep(3600)
    elif path == "/never-accepts":
        # Neither accepts nor denies (a wait that never ends): wsgi_read_timeout answers.
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            STATS["cancelled"].append(key)
            raise
    elif path == "/accept-after-release":
        # Accepts only once told to (GET /release?KEY): the client may have gone by then.
        await release(key).wait()
        try:
            await send({"type": "websocket.accept"})
            STATS["late_accept"][key] = "accepted"
        except OSError as e:
            STATS["late_accept"][key] = f"{type(e).__name__}: {e}"
    elif path == "/firehose":
        # Sends 16 KiB messages as fast as the client takes them, until it goes.
        await send({"type": "websocket.accept"})
        piece = "x" * 16384
        try:
            while True:
                await send({"type": "websocket.send", "text": piece})
        except OSError:
            STATS["closed"][key] = [(await receive()).get("code")]
    elif path == "/send-after-client-close":
        # Accepts, then (told to, once the client's close frame is in) sends before it has
        # received the disconnect: the send says the client closed; a close is taken, as the
        # closing handshake is under way.
        await send({"type": "websocket.accept"})
        await release(key).wait()
        outcome = STATS["after_close"][key] = {}
        for what, message in (("send", {"type": "websocket.send", "text": "late"}),
                              ("close", {"type": "websocket.close", "code": 1000})):
            try:
                await send(message)
                outcome[what] = "sent"
            except OSError as e:
                outcome[what] = type(e).__name__
        outcome["received"] = [(await receive()).get("code")]
    elif path == "/subscriptions":
        # A GraphQL server's subscriptions (Strawberry, Ariadne): a task per subscription sends
        # every 2 ms, the connection's task listens, and at the client's close it cancels them
        # (?KEY), or, with ?KEY&deaf, lets them run on until their sends raise. ?KEY&busy: one
        # task that sends at every turn of the loop, so that it surely runs between the client's
        # close frame and the listening task's wake-up (the race made certain).
        key, _, mode = key.partition("&")
        await send({"type": "websocket.accept"})
        outcome = STATS["subscriptions"][key] = {"cancelled": 0, "raised": [], "sent": 0}
        pause = 0 if mode == "busy" else 0.002

        async def subscription(n):
            try:
                while True:
                    await send({"type": "websocket.send", "text": str(n)})
                    outcome["sent"] += 1
                    await asyncio.sleep(pause)
            except asyncio.CancelledError:
                outcome["cancelled"] += 1
                raise
            except OSError as e:
                outcome["raised"].append(type(e).__name__)

        tasks = [asyncio.ensure_future(subscription(n)) for n in range(1 if mode == "busy" else 3)]
        while (await receive())["type"] != "websocket.disconnect":
            pass
        if mode != "deaf":
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        outcome["done"] = True
    elif path == "/gone-before-accept":
        # The client goes before the app decides: receive() says so, and the app returns.
        message = await receive()
        while message["type"] == "websocket.connect":
            message = await receive()
        STATS["closed"][key] = [message["code"], message.get("reason", "")]
    elif path == "/count":
        # Receives without sending: how many messages and bytes arrived.
        await send({"type": "websocket.accept"})
        n = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                STATS["received"][key] = n
                return
            n += len(message.get("bytes") or message.get("text") or "")
