"""What an app writes to the error log while it serves a request, WSGI and ASGI: logging,
print() (where standard output is /dev/null), wsgi.errors, and the traceback of a request that
fails (`/boom`); the path names each line."""
import logging

log = logging.getLogger("logs_of_a_request")


def application(environ, start_response):
    path = environ["SCRIPT_NAME"] + environ["PATH_INFO"]
    log.warning("logged for wsgi %s", path)
    print("printed for wsgi", path)
    environ["wsgi.errors"].write(f"to wsgi.errors for {path}\n")
    if path.endswith("/boom"):
        raise RuntimeError(f"boom in wsgi {path}")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    log.warning("logged for asgi %s", path)
    print("printed for asgi", path)
    if path.endswith("/boom"):
        raise RuntimeError(f"boom in asgi {path}")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
