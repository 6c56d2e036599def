"""Apps for the security tests: each takes what it tries from the query string, so that one app
can try many values. Percent-escapes in the query are decoded as latin-1 (one byte, one code
point), so any byte can be put into a header."""
from urllib.parse import parse_qsl


def _pairs(environ):
    return parse_qsl(environ["QUERY_STRING"], keep_blank_values=True, encoding="latin-1")


def headers_from_query(environ, start_response):
    """Each `name=value` of the query becomes one response header."""
    start_response("200 OK", [("Content-Type", "text/plain")] + _pairs(environ))
    return [b"the app's own body\n"]


def status_from_query(environ, start_response):
    """The whole (decoded) query is the status line."""
    start_response(dict(_pairs(environ))["status"], [("Content-Type", "text/plain")])
    return [b"the app's own body\n"]


def length_from_query(environ, start_response):
    """Declares the query's `length` as its Content-Length, then sends five bytes."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", dict(_pairs(environ))["length"])])
    return [b"12345"]


def request_headers(environ, start_response):
    """Answers with the request's CGI and HTTP_* keys and the body length it read, one per line."""
    body = environ["wsgi.input"].read()
    lines = [f"{k}={v}" for k, v in sorted(environ.items())
             if k.startswith(("HTTP_", "CONTENT_", "REQUEST_METHOD", "PATH_INFO"))]
    lines.append(f"read={len(body)}")
    data = ("\n".join(lines) + "\n").encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


async def asgi_headers_from_query(scope, receive, send):
    """The ASGI twin of `headers_from_query`."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    body = b"the app's own body\n"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            *[(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]]})
    await send({"type": "http.response.body", "body": body})


async def asgi_accel(scope, receive, send):
    """An ASGI app answering with X-Accel-Redirect to the query string, its body in two pieces;
    `?fail&TARGET` raises after the first piece, `?early&TARGET` returns before the last,
    `?bare&TARGET` returns right after the head."""
    if scope["type"] != "http":
        return
    query = scope["query_string"].decode("latin-1")
    mode, _, target = query.partition("&") if query.startswith(("fail&", "early&", "bare&")) else ("", "", query)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-accel-redirect", target.encode("latin-1")), (b"content-type", b"text/html"),
                            (b"content-disposition", b"attachment; filename=hello.txt"),
                            (b"set-cookie", b"seen=1")]})
    if mode == "bare":
        return
    await send({"type": "http.response.body", "body": b"this body is replaced ", "more_body": True})
    if mode == "fail":
        raise RuntimeError("failed after the redirect head")
    if mode == "early":
        return
    await send({"type": "http.response.body", "body": b"by the redirect target"})
