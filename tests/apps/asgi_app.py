"""Raw ASGI 3 test app (no framework): scope dump, body echo, streams, held responses, client
disconnects, and a lifespan that fills the state."""
import asyncio
import json
import os
import sys
import time

if os.environ.get("NGX_WSGI_TEST_MARKS"):
    import atexit
    atexit.register(lambda: open(f"{os.environ['NGX_WSGI_TEST_MARKS']}/atexit-{os.getpid()}", "w").close())

STATS = {"disconnected": {}, "sent": {}, "receiving": {}, "messages": {}, "waiting": {}, "requests": 0}
EVENTS = {}


def event(key):
    return EVENTS.setdefault(key, asyncio.Event())


def text(b):
    return b.decode("latin-1")


async def read_body(receive, key=None):
    body, messages = b"", []
    while True:
        if key:
            STATS["receiving"][key] = len(body) or "started"
        message = await receive()
        if message["type"] == "http.disconnect":
            return body, messages, True
        assert message["type"] == "http.request", message
        body += message.get("body", b"")
        messages.append(len(message.get("body", b"")))
        if not message.get("more_body", False):
            return body, messages, False


async def respond(send, body, status=200, headers=(), content_type=b"text/plain"):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def lifespan(scope, receive, send):
    marks = os.environ.get("NGX_WSGI_TEST_MARKS")
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["pid"] = os.getpid()
            scope["state"]["shared"] = []
            if marks:
                open(f"{marks}/startup-{os.getpid()}", "w").close()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if marks:
                with open(f"{marks}/shutdown-{os.getpid()}", "w") as f:
                    f.write(str(STATS["requests"]))
            await send({"type": "lifespan.shutdown.complete"})
            return


async def error_page_after(send, error, label):
    """What frameworks' error handlers do when a send fails: start an error page. Logs what the
    failed send raised, then what the error page's start did."""
    try:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        then = "sent"
    except Exception as again:
        then = type(again).__name__
    print(f"{label}: {type(error).__name__}, then {then}", file=sys.stderr, flush=True)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    assert scope["type"] == "http"
    route = scope["path"][len(scope["root_path"]):] or "/"
    query = scope["query_string"].decode()
    if route.startswith("/scope") or route.endswith("/scope"):
        body, _, _ = await read_body(receive, query or None)
        dump = {k: v for k, v in scope.items() if k not in ("headers", "raw_path", "query_string", "state")}
        dump["raw_path"] = text(scope["raw_path"])
        dump["query_string"] = text(scope["query_string"])
        dump["headers"] = [[type(n).__name__, text(n), type(v).__name__, text(v)] for n, v in scope["headers"]]
        dump["state"] = sorted(scope.get("state", {}))
        dump["body"] = text(body)
        await respond(send, json.dumps(dump).encode(), content_type=b"application/json")
    elif route == "/echo":
        body, messages, _ = await read_body(receive)
        await respond(send, body, headers=[(b"x-messages", str(len(messages)).encode())])
    elif route == "/buffers":
        # Byte strings in buffers (as uvicorn and Hypercorn take them), headers as [name, value] lists.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [[b"content-type", bytearray(b"text/plain")], [bytearray(b"x-kind"), b"buffers"]]})
        await send({"type": "http.response.body", "body": bytearray(b"from a bytearray\n"), "more_body": True})
        await send({"type": "http.response.body", "body": memoryview(b"<from a memoryview>")[1:-1]})
    elif route == "/echo-slowly":
        # Reads its body only once released: the upload is paused meanwhile.
        await event(query).wait()
        body, messages, _ = await read_body(receive)
        await respond(send, str(len(body)).encode(), headers=[(b"x-messages", str(len(messages)).encode())])
    elif route == "/state":
        state = scope["state"]
        state["mine"] = query  # a per-request copy: never seen by the next request
        state["shared"].append(query)  # the same list: lifespan objects are shared
        await respond(send, json.dumps({"pid": state["pid"], "shared": state["shared"]}).encode())
    elif route == "/stream":
        n = int(query or 5)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"%d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif route == "/late-event":
        # An event stream whose first event waits for /release?KEY (sse-starlette pings after 15 s).
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await event(query).wait()
        await send({"type": "http.response.body", "body": b"data: late\n\n"})
    elif route in ("/hold", "/hold-empty"):
        # The first piece goes out; the rest once /release?KEY is asked (or a FIFO is written).
        # The second kind's first piece is empty, as an event stream that has nothing to say yet.
        first = b"held\n" if route == "/hold" else b""
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        if query.startswith("fifo="):
            path = query[5:]
            await asyncio.to_thread(lambda: open(path, "rb").read(1))
        else:
            await event(query).wait()
        STATS["requests"] += 1
        await send({"type": "http.response.body", "body": b"released\n"})
    elif route in ("/after-release", "/blocks-after-release"):
        # Answers once /release?KEY is asked; the second kind first keeps the loop busy for SECONDS
        # (synchronous work in a coroutine), with every other task waiting behind it.
        key, _, seconds = query.partition("&")
        STATS["waiting"][key] = STATS["waiting"].get(key, 0) + 1
        await event(key).wait()
        if route == "/blocks-after-release":
            time.sleep(float(seconds))
        await respond(send, route.encode())
    elif route == "/whole-then-waits":
        # All its Content-Length promises, then (once its client went, and /release?KEY is asked)
        # its closing message, as Quart sends them: a client may have had the response and gone
        # in between.
        query, _, size = query.partition("&")
        body = b"x" * int(size) if size else b"whole"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await read_body(receive)
        STATS["disconnected"][query] = (await receive())["type"]
        await event(query).wait()
        try:
            await send({"type": "http.response.body", "body": b""})
            STATS["sent"][query] = "closed"
        except Exception as e:
            STATS["sent"][query] = type(e).__name__
    elif route == "/raise-at-disconnect":
        # Raises once the client has gone, having sent nothing.
        await read_body(receive)
        STATS["receiving"][query] = "waiting"
        message = await receive()
        raise RuntimeError(f"{query} raised on {message['type']}")
    elif route == "/listens-while-sending":
        # As Litestar's responses (and Starlette's before ASGI 2.4): a task waits in receive()
        # for the client to go while the response is sent, and the app returns once it heard.
        await read_body(receive)

        async def listen():
            STATS["receiving"][query] = "waiting"
            message = await receive()
            STATS["disconnected"][query] = message["type"]
        listener = asyncio.ensure_future(listen())
        await asyncio.sleep(0)
        await respond(send, b"sent while listening")
        await listener
        STATS["sent"][query] = "returned"
    elif route == "/head-stream":
        # A streamed response whose later pieces wait for /release?KEY: under HEAD the client
        # may leave once it has the head, and the response is still whole.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        STATS["waiting"][query] = "head sent"
        await event(query).wait()
        try:
            if query.endswith("-endless"):
                # As Starlette's StreamingResponse of an endless generator: only a raise stops it.
                for _ in range(1000):
                    await send({"type": "http.response.body", "body": b"more\n", "more_body": True})
                    await asyncio.sleep(0.01)
            elif query.endswith("-finite"):
                # A stream of a known end (a small table's CSV): under HEAD it runs to it.
                for _ in range(50):
                    await send({"type": "http.response.body", "body": b"row\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"last\n"})
            STATS["disconnected"][query] = "complete"
        except OSError as e:
            STATS["disconnected"][query] = type(e).__name__
    elif route == "/events":
        # A server-sent event stream, one event every 0.2 s until send() raises (or a plain
        # streamed response of the same, with ?plain).
        kind = b"text/plain" if query == "plain" else b"text/event-stream"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        n = 0
        try:
            while True:
                await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
                n += 1
                await asyncio.sleep(0.2)
        except OSError as e:
            # Then, as Datasette does, an error page: the same answer.
            await error_page_after(send, e, f"events {query}")
    elif route == "/pieces-then-error-page":
        # A response in pieces whose app, when a send fails, starts an error page (frameworks'
        # error handlers do; Datasette's does).
        # Under HEAD the server drops a small one's pieces, and a large one's past 1 MiB raise.
        size, count = (409600, 5) if query.endswith("-big") else (4096, 3)
        length = str(size * count).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        try:
            for i in range(count):
                await send({"type": "http.response.body", "body": b"x" * size, "more_body": i < count - 1})
                await asyncio.sleep(0.05)
            STATS["sent"][query] = "complete"
        except OSError as e:
            await error_page_after(send, e, f"error page {query}")
    elif route == "/answer":
        # An answer streamed token by token as server-sent events, then its end ("[DONE]", as
        # OpenAI's API sends): a stream with an end of its own, a few seconds long.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for n in range(int(query or 10)):
            await send({"type": "http.response.body", "body": b"data: token %d\n\n" % n, "more_body": True})
            await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
    elif route == "/hop":
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"connection", b"keep-alive"), (b"Keep-Alive", b"timeout=99"), (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"h2c"), (b"te", b"trailers"), (b"trailers", b"x"),
            (b"proxy-authenticate", b"Basic realm=\"proxy\""),
            (b"x-kept", b"yes"), (b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"hop"})
    elif route == "/trailers":
        # trailers: true and a trailers message, as apps that set it on every response do.
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"with trailers"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})
        STATS["disconnected"]["trailers"] = "complete"
    elif route == "/release":
        event(query).set()
        await respond(send, b"released")
    elif route == "/wait-disconnect":
        # Reads the body, then waits for the client to go before answering.
        await read_body(receive)
        STATS["receiving"][query] = "waiting"
        message = await receive()
        STATS["disconnected"][query] = message["type"]
    elif route == "/upload-until-gone":
        body, messages, gone = await read_body(receive, key=query)
        STATS["messages"][query] = messages
        STATS["disconnected"][query] = f"gone after {len(body)} bytes" if gone else "complete"
        if gone and query.startswith("linger"):
            await asyncio.sleep(0.5)  # what it does about it takes a while
        if not gone:
            await respond(send, b"complete")
    elif route == "/stream-until-gone":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        sent = 0
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
                sent += 65536
                STATS["sent"][query] = sent
        except OSError as e:
            STATS["disconnected"][query] = type(e).__name__
            raise
    elif route == "/error-page-when-gone":
        # As Datasette does: a failed send is handled by starting an error response.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except OSError:
            try:
                await send({"type": "http.response.start", "status": 500, "headers": []})
            except Exception as e:
                STATS["disconnected"][query] = type(e).__name__
                raise
    elif route == "/body-only-middleware":
        # A file response as Starlette's FileResponse sends it, behind a middleware that, like
        # Gradio's Brotli one, holds the start until a body and passes on nothing else.
        async def file_response(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if "http.response.pathsend" in scope["extensions"]:
                await send({"type": "http.response.pathsend", "path": query})
            else:
                with open(query, "rb") as f:
                    await send({"type": "http.response.body", "body": f.read()})

        held = []

        async def body_only(message):
            if message["type"] == "http.response.start":
                held.append(message)
            elif message["type"] == "http.response.body":
                while held:
                    await send(held.pop())
                await send(message)

        await file_response(scope, receive, body_only)
    elif route == "/file":
        # http.response.pathsend: nginx sends the file itself.
        assert "http.response.pathsend" in scope["extensions"]
        # events: a file of recorded events, as FileResponse(media_type="text/event-stream").
        kind = b"text/event-stream" if query.startswith("events:") else b"application/octet-stream"
        path = query.removeprefix("nolength:").removeprefix("events:")
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        length = [] if query.startswith("nolength:") else [(b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", kind), *length]})
        await send({"type": "http.response.pathsend", "path": path})
    elif route == "/subprocess":
        # What apps do to run a tool (ffmpeg, git): the loop's child watcher must see it end.
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(b"x" * 200000)
        slow = await asyncio.create_subprocess_exec("sleep", "60")
        try:
            await asyncio.wait_for(slow.wait(), 0.05)
        except asyncio.TimeoutError:
            slow.kill()
        await respond(send, json.dumps([len(out), proc.returncode, await slow.wait()]).encode())
    elif route == "/loop":
        await respond(send, type(asyncio.get_running_loop()).__module__.encode())
    elif route == "/lingers-after-response":
        # Work after the response that outlives any shutdown timeout (a long poll of its own).
        await respond(send, b"answered")
        await asyncio.sleep(3600)
    elif route == "/blocks-loop":
        # Work left after the response (Starlette's BackgroundTasks run so) that blocks the
        # loop's thread in C for ever: a time.sleep, a synchronous driver waiting for a lock.
        marks = os.environ.get("NGX_WSGI_TEST_MARKS")
        await respond(send, b"answered")
        if marks:
            open(f"{marks}/blocking-{os.getpid()}", "w").close()
        time.sleep(float(query))
    elif route == "/exit-in-callback":
        # sys.exit() in a plain callback: asyncio lets SystemExit out of run_forever().
        asyncio.get_running_loop().call_soon(sys.exit, 3)
        await respond(send, b"exiting")
    elif route == "/wrap-tasks":
        # What Sentry's asyncio integration does: a task factory that wraps every coroutine.
        def factory(loop, coro, **kwargs):
            async def wrapped():
                return await coro
            kwargs.pop("name", None)
            return asyncio.Task(wrapped(), loop=loop, name="wrapped", **kwargs)
        asyncio.get_running_loop().set_task_factory(factory)
        await respond(send, b"wrapping")
    elif route == "/break-loop":
        # An Exception out of the loop's own code (a MemoryError in its internals, a timer heap
        # an app corrupted): here every later round of the loop fails.
        def broken():
            raise RuntimeError("the loop's internals are broken")
        asyncio.get_running_loop()._run_once = broken
        await respond(send, b"broken")
    elif route == "/stop-loop":
        # What some apps do to "shut down" the loop they believe is theirs.
        asyncio.get_running_loop().stop()
        await respond(send, b"stopped")
    elif route == "/stats":
        await respond(send, json.dumps(STATS).encode(), content_type=b"application/json")
    elif route == "/status":
        status = int(query)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"body of %d" % status})
    elif route == "/headers":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Mixed-Case", b"v"),
                                (b"content-type", b"text/plain; charset=utf-8"), (b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": b"ok"})
    else:
        await respond(send, b"not found: " + route.encode(), status=404)
