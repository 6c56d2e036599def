"""A Python handler for SIGSEGV set at import (it would return to the faulting instruction for
ever), then a crash in C code (?crash): the server's disposition is put back, the worker dies."""
import ctypes
import signal

signal.signal(signal.SIGSEGV, lambda signum, frame: None)


def application(environ, start_response):
    if environ["QUERY_STRING"] == "crash":
        ctypes.string_at(0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"alive"]
