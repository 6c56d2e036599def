"""Well-behaved apps that use every response feature of PEP 3333."""
import io
import os
import sys
import threading
import time

_lock = threading.Lock()
close_calls = {}


def _closing(name, items):
    class Body:
        def __iter__(self):
            return iter(items)

        def close(self):
            with _lock:
                close_calls[name] = close_calls.get(name, 0) + 1

    return Body()


def list_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Multi", "a"), ("X-Multi", "b"),
                              ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    return [b"hello ", b"world"]


def connection_headers(environ, start_response):
    # What server-sent event examples send, and an app that passes a fetched response's headers
    # on (PEP 3333 forbids them all; gunicorn drops them).
    start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "close"),
                              ("Keep-Alive", "timeout=99"), ("X-Kept", "yes"),
                              ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("TE", "trailers"),
                              ("Trailers", "X-T"), ("Proxy-Connection", "keep-alive")])
    return [b"served"]


def two_types(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Before", "1"),
                              ("Content-Type", "application/json"), ("X-After", "2")])
    return [b"{}"]


def generator_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(3):
        yield b"chunk%d;" % i


def write_then_iterable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written;")
    write(b"")
    return [b"returned"]


def closing(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _closing(environ["QUERY_STRING"], [b"a", b"b"])


def close_count(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    with _lock:
        return [str(close_calls.get(environ["QUERY_STRING"], 0)).encode()]


def endless_with_length(environ, start_response):
    # Says 10 bytes, then never ends: the server stops iterating once it has them (PEP 3333).
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])

    class Endless:
        def __iter__(self):
            while True:
                yield b"12345"

        def close(self):
            with _lock:
                close_calls["endless"] = close_calls.get("endless", 0) + 1

    return Endless()


def lazy_start(environ, start_response):
    def body():
        start_response("201 Created", [("Content-Type", "text/plain")])
        yield b""
        yield b"lazy"
    return body()


def exc_info_before_body(environ, start_response):
    start_response("200 OK", [("X-Before", "1")])
    try:
        raise ValueError("handled")
    except ValueError:
        start_response("503 Service Unavailable", [("X-After", "1")], sys.exc_info())
    return [b"replaced"]


def exc_info_after_body(environ, start_response):
    start_response("200 OK", [])

    def body():
        yield b"first"
        try:
            raise ValueError("too late")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"
    return body()


def status(environ, start_response):
    code = environ["QUERY_STRING"]
    reasons = {"204": "No Content", "304": "Not Modified", "404": "Not Found", "299": "Custom Thing"}
    start_response(f"{code} {reasons[code]}", [("Content-Type", "text/plain")])
    return [b"should not be sent" if code in ("204", "304") else b"body"]


def length_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def length_longer_than_body(environ, start_response):
    start_response("200 OK", [("Content-Length", "100")])
    return [b"short"]


def length_shorter_than_body(environ, start_response):
    start_response("200 OK", [("Content-Length", "3")])
    return [b"abcdef"]


def file_wrapper(environ, start_response):
    f = open(__file__, "rb")
    start_response("200 OK", [("Content-Type", "text/x-python")])
    return environ["wsgi.file_wrapper"](f, 1024)


def big(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [bytes(range(256)) * 4096 * 4]  # 4 MiB


class _ClosesSlowly:
    # Work in close() (Flask's call_on_close, Django's request_finished handlers): here until
    # the test, having read the whole response, says so.
    def __init__(self, marks):
        self.marks = marks

    def __iter__(self):
        yield b"part 1\n"
        yield b"part 2\n"

    def close(self):
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{self.marks}/release-close") and time.monotonic() < deadline:
            time.sleep(0.01)
        open(f"{self.marks}/closed", "w").close()


def closes_slowly(environ, start_response):
    """?length: with its Content-Length."""
    length = [("Content-Length", "14")] if environ["QUERY_STRING"] == "length" else []
    start_response("200 OK", [("Content-Type", "text/plain")] + length)
    return _ClosesSlowly(os.environ["NGX_WSGI_TEST_MARKS"])


def plain(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [("method=%s if-match=%s" % (environ["REQUEST_METHOD"], environ.get("HTTP_IF_MATCH"))).encode()]


def pregzipped(environ, start_response):
    import gzip
    body = gzip.compress(b'{"already": "compressed"}' * 100)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                              ("Content-Length", str(len(body)))])
    return [body]


def empty_with_length(environ, start_response):
    start_response("200 OK", [("Content-Length", "10")])
    return []


def accel(environ, start_response):
    start_response("200 OK", [("X-Accel-Redirect", environ["QUERY_STRING"]), ("Content-Type", "text/html"),
                              ("Content-Disposition", "attachment; filename=hello.txt")])
    return [b"this body is replaced by the redirect target"]


def json_with_length(environ, start_response):
    # Flask's and Werkzeug's way: every response with its Content-Length, HEAD's too.
    body = ('{"items": [' + ", ".join(f'"{i}"' for i in range(500)) + "]}").encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def head_skips_the_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
    return [b"short"] if environ["REQUEST_METHOD"] == "HEAD" else [b"x" * 100]


def file_wrapper_of(environ, start_response):
    # The file named by the query string (a download of a file the app does not own).
    f = open(environ["QUERY_STRING"], "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](f)


def file_wrapper_validated(environ, start_response):
    # What a download view sends for a client to resume with If-Range.
    f = open(__file__, "rb")
    start_response("200 OK", [("Content-Type", "text/x-python"), ("ETag", '"v1"'),
                              ("Last-Modified", "Wed, 01 Jan 2025 00:00:00 GMT")])
    return environ["wsgi.file_wrapper"](f)


def file_wrapper_from_position(environ, start_response):
    f = open(__file__, "rb")
    f.read(100)
    start_response("200 OK", [("Content-Type", "text/x-python")])
    return environ["wsgi.file_wrapper"](f)


def file_wrapper_limited(environ, start_response):
    f = open(__file__, "rb")
    start_response("200 OK", [("Content-Type", "text/x-python"), ("Content-Length", "50")])
    return environ["wsgi.file_wrapper"](f)


def file_wrapper_bytesio(environ, start_response):
    import io
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](io.BytesIO(b"in memory, " * 1000), 100)


def file_wrapper_proc(environ, start_response):
    # procfs says 0 bytes and has some.
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](open("/proc/version", "rb"))


def file_wrapper_sysfs(environ, start_response):
    # sysfs says a page (4096 bytes) and has a few.
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](open("/sys/devices/system/cpu/online", "rb"))


def file_wrapper_of_path(environ, start_response):
    # The file the query string names (tests/test_responses.py shrinks it while it is sent).
    f = open(environ["QUERY_STRING"], "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](f)


def file_wrapper_gzip(environ, start_response):
    # A gzip file's descriptor holds the compressed bytes; read() gives the content.
    import gzip
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".gz", delete=False) as t:
        t.write(gzip.compress(b"the content, " * 1000))
    f = gzip.open(t.name, "rb")
    os.unlink(t.name)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](f)


class LyingFileno(io.BytesIO):
    """In memory, with the descriptor of another (regular) file."""

    def __init__(self, data, other):
        super().__init__(data)
        self.other = other

    def fileno(self):
        return self.other.fileno()


def file_wrapper_lying_fileno(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](LyingFileno(b"mine, " * 100, open(__file__, "rb")))


def file_wrapper_temporary(environ, start_response):
    # tempfile's NamedTemporaryFile (as Django's File) is a proxy holding the file in `.file`.
    import tempfile
    t = tempfile.NamedTemporaryFile()
    t.write(b"spooled, " * 1000)
    t.seek(0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](t)


class Shouting(io.BufferedReader):
    """A binary file whose read() gives other bytes than its descriptor holds."""

    def read(self, size=-1):
        return super().read(size).upper()


class InBlocks(io.FileIO):
    """Zope's filestream_iterator: a file that iterates in blocks of its own size, and reads
    as any file."""

    def __next__(self):
        data = self.read(4096)
        if not data:
            raise StopIteration
        return data


class ShoutingFile(io.FileIO):
    def read(self, size=-1):
        return super().read(size).upper()


def file_wrapper_blocks(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](InBlocks(__file__))


def file_wrapper_shouting_file(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](ShoutingFile(__file__))


def file_wrapper_subclass(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](Shouting(io.FileIO(__file__)))


def cache_headers(environ, start_response):
    # What an app says of its response's caching and ranges, which nginx's own directives
    # (expires, gzip) rewrite as they do a proxied app's.
    start_response("200 OK", [("Content-Type", "text/html"),
                              ("Cache-Control", "no-store"), ("Cache-Control", "private"),
                              ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
                              ("Accept-Ranges", "bytes")])
    return [b"<p>cacheable or not</p>" * 20]
