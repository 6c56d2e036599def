"""print() and sys.stderr from an app, at import, per request and from a thread: where a daemon's
standard output is /dev/null they reach the error log. faulthandler needs a descriptor."""
import asyncio
import faulthandler
import io
import sys
import threading

faulthandler.enable()
# What scripts do to be sure of UTF-8 and line-by-line output: io's text stream API.
sys.stdout.reconfigure(encoding="utf-8", line_buffering=True)
print("printed at import")


def application(environ, start_response):
    print("printed for", environ["PATH_INFO"])
    sys.stdout.buffer.write("bytes written, caf\u00e9\n".encode())
    print("no newline yet", end="")
    sys.stdout.flush()
    thread = threading.Thread(target=print, args=("printed by a thread",))
    thread.start()
    thread.join()
    with io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", line_buffering=True) as wrapped:
        wrapped.write("through a TextIOWrapper\n")
    print("still printing after it closed its buffer")
    print("written to sys.stderr", file=sys.stderr)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{sys.stdout.isatty()} {sys.stdout.encoding} {sys.stderr.fileno()}".encode()]


B_PRINTED = None
A_WAITING = False


async def asgi_app(scope, receive, send):
    global B_PRINTED, A_WAITING
    if scope["type"] != "http":
        return
    B_PRINTED = B_PRINTED or asyncio.Event()
    status = 200
    if scope["path"] == "/asgi/a":
        # A line begun, and ended after another task (of another request) printed its own.
        print("partial of A", end="")
        A_WAITING = True
        await B_PRINTED.wait()
        print(" and its end")
    elif scope["path"] == "/asgi/b":
        if A_WAITING:
            print("whole line of B")
            B_PRINTED.set()
        else:
            status = 409
    else:
        print("printed by an ASGI task for", scope["path"])
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"printed"})


def to_stderr(environ, start_response):
    print("written to sys.stderr", file=sys.stderr)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"written"]
