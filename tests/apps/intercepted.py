"""Apps whose error statuses nginx's error_page answers under wsgi_intercept_errors: the status
comes from the query string (`?404`, `?401&endless`), and the body is the app's own page."""
import asyncio
import sys


def _head(status):
    headers = [("Content-Type", "text/plain"), ("X-App", "yes"), ("Set-Cookie", "from=app")]
    if status == 401:
        headers.append(("WWW-Authenticate", 'Basic realm="app"'))
    return f"{status} From The App", headers


def _with_redirect(headers, mode):
    # An error status with an X-Accel-Redirect: nginx's upstreams take the error page first.
    return headers + [("X-Accel-Redirect", "/errors/401.html")] if mode == "accel" else headers


def _query(query):
    status, _, mode = query.partition("&")
    return int(status or 200), mode


class Endless:
    """An endless body (a stream): the server must stop iterating it, and close it."""

    def __init__(self, piece, errors):
        self.piece = piece
        self.errors = errors

    def __iter__(self):
        while True:
            yield self.piece

    def close(self):
        print("intercepted: the endless body was closed", file=self.errors)


def application(environ, start_response):
    status, mode = _query(environ["QUERY_STRING"])
    line, headers = _head(status)
    body = f"the app's own {status} page\n".encode()
    write = start_response(line, _with_redirect(headers, mode))
    if mode == "endless":
        return Endless(body, environ["wsgi.errors"])
    if mode == "write":
        for _ in range(3):
            write(body)
        return []
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    status, mode = _query(scope["query_string"].decode())
    _, headers = _head(status)
    await send({"type": "http.response.start", "status": status,
                "headers": [(n.lower().encode(), v.encode()) for n, v in _with_redirect(headers, mode)]})
    body = f"the app's own {status} page\n".encode()
    if mode != "endless":
        await send({"type": "http.response.body", "body": body})
        return
    try:
        while True:
            await send({"type": "http.response.body", "body": body * 4096, "more_body": True})
            await asyncio.sleep(0)
    except OSError as e:
        print(f"intercepted: the endless body stopped: {type(e).__name__}", file=sys.stderr)
