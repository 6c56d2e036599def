"""Streaming responses: server-sent events, huge generated bodies, endless generators."""
import threading
import queue
import time

_lock = threading.Lock()
gates = {}
stats = {"yielded": 0, "closed": {}}


def _gate(name):
    with _lock:
        return gates.setdefault(name, threading.Event())


def events(environ, start_response):
    """One event, then wait until the test releases the second one."""
    name = environ["QUERY_STRING"]
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    yield b"data: first\n\n"
    if not _gate(name).wait(20):
        yield b"data: timed out\n\n"
        return
    yield b"data: second\n\n"


def release(environ, start_response):
    _gate(environ["QUERY_STRING"]).set()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"released"]


def huge(environ, start_response):
    """1 GiB, generated 64 KiB at a time: the same bytes object each time, or (?fresh) a new
    one each time, which the server must let go of as the client takes them."""
    block = b"x" * 65536
    fresh = environ["QUERY_STRING"] == "fresh"
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(1 << 30))])

    def body():
        for _ in range((1 << 30) // 65536):
            with _lock:
                stats["yielded"] += 65536
            yield bytes(bytearray(block)) if fresh else block
    return body()


class Endless:
    def __init__(self, name, pause):
        self.name, self.pause = name, pause

    def __iter__(self):
        return self

    def __next__(self):
        if self.pause:
            time.sleep(self.pause)
        return b"tick\n" * 100

    def close(self):
        with _lock:
            stats["closed"][self.name] = stats["closed"].get(self.name, 0) + 1


def endless(environ, start_response):
    name, _, rest = environ["QUERY_STRING"].partition("&")
    pause, _, status = rest.partition("&")
    start_response("204 No Content" if status == "204" else "200 OK", [("Content-Type", "text/plain")])
    return Endless(name, float(pause or 0))


def stats_app(environ, start_response):
    import json
    with _lock:
        body = json.dumps(stats).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def writer(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written first\n")
    _gate(environ["QUERY_STRING"]).wait(20)
    return [b"then returned\n"]


def big_stream(environ, start_response):
    """1 MiB in 64 KiB pieces, more than one stream buffer."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for _ in range(16):
        yield b"y" * 65536


def ticking_events(environ, start_response):
    """An event stream with PAUSE seconds between events (?NAME&PAUSE); its end is logged."""
    name, _, pause = environ["QUERY_STRING"].partition("&")
    errors = environ["wsgi.errors"]
    kind = "text/event-stream; charset=utf-8" if name.startswith("sse") else "text/plain"
    start_response("200 OK", [("Content-Type", kind), ("Cache-Control", "no-cache")])

    def body():
        sent = 0
        try:
            while True:
                yield f"data: {sent}\n\n".encode()
                sent += 1
                time.sleep(float(pause))
        finally:
            errors.write(f"events {name}: closed after {sent}\n")
            errors.flush()
    return body()


def answer(environ, start_response):
    """An answer streamed token by token as server-sent events (?COUNT, 0.2 s apart), then its
    end ("[DONE]", as OpenAI's API sends), to whatever method asks: an end of its own."""
    start_response("200 OK", [("Content-Type", "text/event-stream")])

    def body():
        for n in range(int(environ["QUERY_STRING"] or 10)):
            yield b"data: token %d\n\n" % n
            time.sleep(0.2)
        yield b"data: [DONE]\n\n"
    return body()


def _quiet_ticks(name, pause, errors):
    sent = 0
    try:
        errors.write(f"events {name}: waiting\n")
        errors.flush()
        while True:
            time.sleep(float(pause))
            yield f"data: {sent}\n\n".encode()
            sent += 1
    finally:
        errors.write(f"events {name}: closed after {sent}\n")
        errors.flush()


def queued_events(environ, start_response):
    """An event stream whose events come from a queue that nothing feeds (?NAME), waited on with
    no timeout (Flask's common `queue.Queue().get()`): how the wait ends is logged."""
    name = environ["QUERY_STRING"]
    errors = environ["wsgi.errors"]
    start_response("200 OK", [("Content-Type", "text/event-stream")])

    def events():
        try:
            errors.write(f"events {name}: waiting\n")
            errors.flush()
            while True:
                yield f"data: {queue.Queue().get()}\n\n".encode()
        except BaseException as e:
            errors.write(f"events {name}: {type(e).__name__}\n")
            errors.flush()
            raise
    return events()


def quiet_events(environ, start_response):
    """An event stream whose events come PAUSE seconds apart, the first one too (?NAME&PAUSE):
    a generator waiting on its queue before it has anything to say; its end is logged."""
    name, _, pause = environ["QUERY_STRING"].partition("&")
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    return _quiet_ticks(name, pause, environ["wsgi.errors"])


def quiet_events_generator(environ, start_response):
    """The same, the app itself a generator: its start_response runs at its first step."""
    name, _, pause = environ["QUERY_STRING"].partition("&")
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    yield from _quiet_ticks(name, pause, environ["wsgi.errors"])


def thread_writer(environ, start_response):
    """A thread of the app's calls write() while the response iterates (which WSGI does not
    allow): it fills the client's way and waits for room; then the iteration yields."""
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    name = environ["QUERY_STRING"]
    writing = threading.Event()

    def writer_thread():
        block = b"w" * 65536
        try:
            while True:
                writing.set()
                write(block)
        except Exception as e:  # noqa: BLE001 (the test reads what it was)
            with _lock:
                stats["closed"][name] = f"{type(e).__name__}: {e}"

    threading.Thread(target=writer_thread, daemon=True).start()
    writing.wait(10)
    time.sleep(0.5)  # the thread is inside write() now, waiting for the client
    yield b"from the iteration"


def brief(environ, start_response):
    """`first`, then `last` SECONDS later (?SECONDS): a stream whose head goes out at once."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first"
    time.sleep(float(environ["QUERY_STRING"] or "0"))
    yield b"last"
