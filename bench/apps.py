"""The bench workloads, as plain WSGI callables (the same module under every server)."""
import json
import time

HELLO = b"Hello, world!"


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def json_app(environ, start_response):
    body = json.dumps({"message": "Hello, World!", "path": environ["PATH_INFO"],
                       "items": list(range(10))}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]


def sleep(environ, start_response):
    time.sleep(0.01)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"slept"]


def dispatch(environ, start_response):
    """One app for servers that take a single callable (gunicorn)."""
    route = {"/hello": hello, "/json": json_app, "/echo": echo, "/sleep": sleep}.get(environ["PATH_INFO"])
    if route is None:
        start_response("404 Not Found", [("Content-Length", "0")])
        return []
    return route(environ, start_response)
