"""Responses held until a file exists (its path is the query string's first part, before `&`),
as a WSGI callable (`application`, on a thread) and an ASGI one (`app`, a task polling without
blocking the loop). Each body names its request (the part after `&`) at its end."""
import asyncio
import os
import time

PADDING = b"." * 60000   # about one HTTP/2 stream window: the streams share the connection's


def parts(query):
    flag, _, name = query.partition("&")
    return flag, b"released %s\n" % name.encode()


def application(environ, start_response):
    flag, last = parts(environ["QUERY_STRING"])
    while not os.path.exists(flag):
        time.sleep(0.02)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"held\n", PADDING, last]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    flag, last = parts(scope["query_string"].decode())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"held\n", "more_body": True})
    while not os.path.exists(flag):
        await asyncio.sleep(0.02)
    await send({"type": "http.response.body", "body": PADDING + last})
