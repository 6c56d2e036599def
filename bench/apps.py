"""The bench workloads, as plain WSGI callables: the same module under every server.

Every server runs `dispatch` (one callable, routed on PATH_INFO), so each pays the same routing cost.
"""
import json
import queue
import time
from urllib.parse import parse_qs

try:
    import flask
except ImportError:         # run.py stays importable without Flask (bench/memory.py); the bench needs it
    flask = None

HELLO = b"Hello, world!"
CHUNK = b"\xab" * 65536          # the stream workload: 16 chunks of 64 KiB = 1 MiB
STREAM_CHUNKS = 16
STREAM_SIZE = len(CHUNK) * STREAM_CHUNKS


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def json_body(path):
    return json.dumps({"message": "Hello, World!", "path": path, "items": list(range(10))}).encode()


def json_app(environ, start_response):
    body = json_body(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def echo(environ, start_response):
    # read(n) rather than read(): PEP 3333 does not promise a size-less read.
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(STREAM_SIZE))])
    return (CHUNK for _ in range(STREAM_CHUNKS))


def sleep(environ, start_response):
    time.sleep(0.01)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"slept"]


def events(environ, start_response):
    """A server-sent-events stream (bench/streams.py): one line at once, then one a second, the app
    blocked in between the way such apps are: in `time.sleep` (`?wait=sleep`, the default) or in
    `queue.get` on a queue nothing is put on (`?wait=queue`: an app waiting for its next event).
    `?lines=N` (default 3600) and `?interval=S` (default 1) bound it for checks. Each line is
    `data: N T`, T the app's `time.monotonic()` when it made the line."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    lines = int(query.get("lines", ["3600"])[0])
    interval = float(query.get("interval", ["1"])[0])
    wait = query.get("wait", ["sleep"])[0]
    # X-Accel-Buffering: the nginx in front of the proxied peers passes each line on at once, as
    # the nginx documentation tells SSE apps behind proxy_pass/uwsgi_pass to ask.
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                              ("X-Accel-Buffering", "no")])
    return event_lines(lines, interval, wait)


def event_lines(lines, interval, wait):
    pending = queue.Queue()
    for i in range(lines):
        if i:
            if wait == "queue":
                try:
                    pending.get(timeout=interval)
                except queue.Empty:
                    pass
            else:
                time.sleep(interval)
        # The clock the line was made at (CLOCK_MONOTONIC, the same in every process of the
        # machine): the client tells the server's delay from its own.
        yield b"data: %d %.6f\n\n" % (i, time.monotonic())


ROUTES = {"/hello": hello, "/json": json_app, "/echo": echo, "/stream": stream, "/sleep": sleep, "/events": events}

# The Flask workload: a route with a query argument and a JSON response through Flask's request
# and response objects.
flask_app = None
if flask is not None:
    flask_app = flask.Flask(__name__)

    @flask_app.route("/flask")
    def flask_route():
        name = flask.request.args.get("name", "world")
        return flask.jsonify(message=f"Hello, {name}!", items=list(range(10)))

    ROUTES["/flask"] = flask_app


def dispatch(environ, start_response):
    """The one callable every server runs."""
    route = ROUTES.get(environ.get("PATH_INFO"))
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []
    return route(environ, start_response)


application = dispatch     # mod_wsgi's default callable name
