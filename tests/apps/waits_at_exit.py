"""An atexit handler that never returns, registered at import."""
import atexit
import threading

atexit.register(threading.Event().wait)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]
