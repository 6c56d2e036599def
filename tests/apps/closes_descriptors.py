"""An app that closes every descriptor of its process but the standard ones (?close), as a
daemonising helper called without its fork would: the worker's epoll, notifier and sockets go."""
import os


def close_all():
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def application(environ, start_response):
    if environ["QUERY_STRING"] == "close":
        close_all()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["query_string"] == b"close":
        close_all()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
