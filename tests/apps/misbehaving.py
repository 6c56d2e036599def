"""Apps that break the WSGI contract or crash: each must cost one 500 (or a cut connection), never
the worker."""
import os
import sys


def ok(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"still serving"]


def raises(environ, start_response):
    raise RuntimeError("boom before headers")


def str_body(environ, start_response):
    start_response("200 OK", [])
    return ["a str, not bytes"]


def str_items_generator(environ, start_response):
    start_response("200 OK", [])
    yield "text"


def non_iterable(environ, start_response):
    start_response("200 OK", [])
    return 42


def returns_none(environ, start_response):
    start_response("200 OK", [])


def start_response_twice(environ, start_response):
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"x"]


def never_starts(environ, start_response):
    return [b"body without a status"]


def never_starts_empty(environ, start_response):
    return []


def bad_status_no_reason(environ, start_response):
    start_response("200", [])
    return [b"x"]


def bad_status_text(environ, start_response):
    start_response("OK", [])
    return [b"x"]


def bad_status_bytes(environ, start_response):
    start_response(b"200 OK", [])
    return [b"x"]


def crlf_in_header(environ, start_response):
    start_response("200 OK", [("X-Injected", "a\r\nSet-Cookie: evil=1")])
    return [b"x"]


def bad_header_name(environ, start_response):
    start_response("200 OK", [("Bad Name", "x")])
    return [b"x"]


def headers_not_list(environ, start_response):
    start_response("200 OK", (("X-A", "b"),))
    return [b"x"]


def header_not_str(environ, start_response):
    start_response("200 OK", [("X-A", 5)])
    return [b"x"]


def hop_by_hop_header(environ, start_response):
    start_response("200 OK", [("Proxy-Authenticate", "Basic")])
    return [b"x"]


def non_latin1_header(environ, start_response):
    start_response("200 OK", [("X-Euro", "\u20ac")])
    return [b"x"]


def generator_raises_first(environ, start_response):
    start_response("200 OK", [])
    raise ValueError("raised on the first next()")
    yield b"never"


def generator_raises_midway(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial "
    raise ValueError("raised mid-body")


def close_raises(environ, start_response):
    class Body:
        def __iter__(self):
            return iter([b"body then a failing close"])

        def close(self):
            raise RuntimeError("close() failed")

    start_response("200 OK", [("Content-Type", "text/plain")])
    return Body()


def sys_exit(environ, start_response):
    sys.exit(3)


def os_exit(environ, start_response):
    os._exit(3)


def child_os_exits(environ, start_response):
    pid = os.fork()
    if pid == 0:
        os._exit(5)
    _, status = os.waitpid(pid, 0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.waitstatus_to_exitcode(status)).encode()]


def keyboard_interrupt(environ, start_response):
    raise KeyboardInterrupt()


def write_str(environ, start_response):
    write = start_response("200 OK", [])
    write("str through write()")
    return []


def errors_stream(environ, start_response):
    environ["wsgi.errors"].write("a line for the error log\n")
    environ["wsgi.errors"].writelines(["second ", "line\n"])
    environ["wsgi.errors"].flush()
    start_response("200 OK", [])
    return [b"logged"]


def errors_unfinished_line(environ, start_response):
    environ["wsgi.errors"].write("no newline at the end")
    start_response("200 OK", [])
    return [b"logged"]


def recursion(environ, start_response):
    def f():
        return f()
    return f()


def informational_status(environ, start_response):
    start_response("100 Continue", [])
    return [b"x"]


def deep_traceback(environ, start_response):
    def fail(n):
        try:
            if n == 0:
                raise ValueError("at the bottom of a long stack")
            fail(n - 1)
        except Exception as e:
            raise RuntimeError(f"wrapped {n} times " + "." * 100) from e
    fail(20)


def python_logging(environ, start_response):
    import logging
    logging.getLogger("myapp.views").warning("disk almost full: %d%%", 93)
    logging.getLogger("myapp.views").info("not shown: the root level is WARNING")
    # A logger with a handler of the app's (to standard error, the error log) writes its line
    # once, as under any server; a library's NullHandler is no handler for the line.
    own = logging.getLogger("myapp.own")
    if not own.handlers:
        own.addHandler(logging.StreamHandler(sys.stderr))
    own.warning("through the app's own handler")
    library = logging.getLogger("somelib")
    if not library.handlers:
        library.addHandler(logging.NullHandler())
    library.warning("a library's warning")
    # A handler that would not write this record (its level) leaves it to the server's log.
    errors_only = logging.getLogger("myapp.errors_only")
    if not errors_only.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.ERROR)
        errors_only.addHandler(handler)
    errors_only.warning("below its handler's level")
    start_response("200 OK", [])
    return [b"logged"]
