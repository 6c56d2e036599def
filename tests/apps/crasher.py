"""faulthandler at import, then a crash in C code (?crash): the Python stacks reach the error log."""
import ctypes
import faulthandler

faulthandler.enable()


def crash_in_c_code():
    ctypes.string_at(0)


def application(environ, start_response):
    if environ["QUERY_STRING"] == "crash":
        crash_in_c_code()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"alive"]
