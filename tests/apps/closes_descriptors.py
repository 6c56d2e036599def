"""An app that closes every descriptor of its process but the standard ones (?close), as a
daemonising helper called without its fork would: the worker's epoll, notifier and sockets go.
With ?close-reuse it then opens files and an epoll of its own, which take the numbers that
were nginx's."""
import os
import select

KEPT = []


def close_all(query):
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    if query == "close-reuse":
        KEPT.append(select.epoll())
        KEPT.extend(os.open("/dev/null", os.O_RDONLY) for _ in range(20))


def application(environ, start_response):
    if environ["QUERY_STRING"].startswith("close"):
        close_all(environ["QUERY_STRING"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["query_string"].startswith(b"close"):
        close_all(scope["query_string"].decode())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
