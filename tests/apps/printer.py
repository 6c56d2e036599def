"""print() and sys.stderr from an app, at import, per request and from a thread: where a daemon's
standard output is /dev/null they reach the error log. faulthandler needs a descriptor."""
import faulthandler
import sys
import threading

faulthandler.enable()
print("printed at import")


def application(environ, start_response):
    print("printed for", environ["PATH_INFO"])
    sys.stdout.buffer.write("bytes written, caf\u00e9\n".encode())
    print("no newline yet", end="")
    sys.stdout.flush()
    thread = threading.Thread(target=print, args=("printed by a thread",))
    thread.start()
    thread.join()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{sys.stdout.isatty()} {sys.stdout.encoding} {sys.stderr.fileno()}".encode()]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    print("printed by an ASGI task for", scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"printed"})
