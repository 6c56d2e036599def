"""wsgi.input exercised in every way PEP 3333 allows; PATH_INFO picks the way."""
import hashlib
import io
import json
import threading
import time

_handoffs = {}


def _rss():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {"VmRSS": fields["VmRSS"], "VmHWM": fields["VmHWM"]}


def application(environ, start_response):
    f = environ["wsgi.input"]
    way = environ["PATH_INFO"]
    if way == "/read":
        parts = [f.read()]
    elif way == "/read_n":
        parts = []
        while True:
            block = f.read(7)
            if not block:
                break
            parts.append(block)
    elif way == "/readline":
        parts = []
        while True:
            line = f.readline()
            if not line:
                break
            parts.append(line)
    elif way == "/readline_size":
        parts = []
        while True:
            line = f.readline(5)
            if not line:
                break
            parts.append(line)
    elif way == "/readlines":
        parts = f.readlines()
    elif way == "/iter":
        parts = list(f)
    elif way == "/seek":
        # Zope reads a request's body again from its start when it retries the request.
        if f.seekable():
            first = f.read()
            f.seek(0)
            again = f.read(5)
            at = f.tell()
            tail_at = f.seek(-4, io.SEEK_END)
            tail = f.read()
            past = f.seek(3, io.SEEK_CUR)
            f.seek(2)
            f.seek(3, io.SEEK_CUR)
            parts = [first, again, b"%d" % at, b"%d" % tail_at, tail, b"%d" % past, f.read(), f.read(3)]
            try:
                f.seek(-1)
            except ValueError:
                parts.append(b"negative refused")
        else:
            try:
                f.seek(0)
                parts = [b"seek on a streamed body"]
            except io.UnsupportedOperation:
                parts = [b"unseekable", f.read()]
    elif way == "/past_end":
        data = f.read()
        parts = [data, f.read(10), f.read(), f.readline()]
    elif way == "/sha256":
        h = hashlib.sha256()
        n = 0
        while True:
            block = f.read(65536)
            if not block:
                break
            n += len(block)
            h.update(block)
        body = json.dumps({"sha256": h.hexdigest(), "length": n, "content_length": environ.get("CONTENT_LENGTH"),
                           "rss": _rss()}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    elif way == "/rss":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(_rss()).encode()]
    elif way == "/read_after_note":
        # Says (in the error log) that it has the first five bytes, then reads the rest.
        first = f.read(5)
        environ["wsgi.errors"].write(f"read_after_note {environ['QUERY_STRING']}: {first!r}\n")
        environ["wsgi.errors"].flush()
        parts = [(first + f.read()).decode()]
    elif way == "/interactive":
        # Answers the first five bytes before the client has sent the rest.
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"got:" + f.read(5) + b"\n")
        return [b"rest:" + f.read() + b"\n"]
    elif way == "/handoff":
        # Hands wsgi.input to a thread of the app's, which reads it while (or after) the response
        # goes out: the read must fail cleanly once the request is over, never touch its memory.
        key = environ["QUERY_STRING"]
        done = threading.Event()
        answered = threading.Event()
        _handoffs[key] = {"done": done, "result": None}

        def reader():
            if key.startswith("after"):
                answered.wait(20)
            try:
                _handoffs[key]["result"] = "read %d bytes" % len(f.read())
            except Exception as e:  # noqa: BLE001 (the test wants whatever it was)
                _handoffs[key]["result"] = f"{type(e).__name__}: {e}"
            done.set()

        threading.Thread(target=reader, daemon=True).start()

        class Answer:
            def __iter__(self):
                yield b"handed off"

            def close(self):
                answered.set()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return Answer()
    elif way == "/handoff_result":
        entry = _handoffs[environ["QUERY_STRING"]]
        entry["done"].wait(20)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(entry["result"]).encode()]
    elif way == "/start_then_read":
        # The head and a first piece out before the body is read (a progress line).
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"started\n")
        try:
            return [b"read %d\n" % len(f.read())]
        except OSError as e:
            return [f"caught {type(e).__name__}: {e}".encode()]
    elif way == "/read_or_say":
        # An app that takes a failed read for its own business and answers anyway.
        try:
            parts = [f.read()]
        except OSError as e:
            parts = [f"caught {type(e).__name__}: {e}".encode()]
    elif way == "/read_fails_then_lingers":
        # A read that fails (the body broke), then the app takes a while over it.
        try:
            parts = [f.read()]
        except OSError:
            time.sleep(0.5)
            raise
    elif way == "/threads":
        # Three threads read at once: each read gets bytes of its own, none an error.
        got, errors = [], []

        def reader():
            while True:
                try:
                    block = f.read(1000)
                except Exception as e:  # noqa: BLE001 (the test wants whatever it was)
                    errors.append(f"{type(e).__name__}: {e}")
                    return
                if not block:
                    return
                got.append(block)

        readers = [threading.Thread(target=reader) for _ in range(3)]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        body = json.dumps({"length": sum(map(len, got)), "sorted": hashlib.sha256(b"".join(sorted(got))).hexdigest(),
                           "errors": errors}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    elif way == "/ignore":
        parts = [b"ignored"]
    elif way == "/write_then_read":
        # The head leaves before the body is read: no 100 Continue may follow it.
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"head sent\n")
        return [b"body:" + f.read() + b"\n"]
    elif way == "/refuse":
        # Refuses the upload unread (too large, not allowed here).
        start_response("413 Content Too Large", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"too large"]
    else:
        start_response("404 Not Found", [])
        return [b"no such way"]
    body = json.dumps({
        "parts": [p.decode("latin-1") for p in parts],
        "content_length": environ.get("CONTENT_LENGTH"),
        "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
