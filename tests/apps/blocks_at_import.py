"""An import that never ends (a database connection that hangs, a lock that is never released)."""
import threading

threading.Event().wait()


def application(environ, start_response):
    start_response("200 OK", [])
    return [b"never"]
