"""Negative security tests: what a client or an app sends to make the server do what it should
not. The module trusts the app (it runs inside the worker) but checks what the app hands the
server wherever a mistake would put bytes on the wire, leave a location or make the module and the
server disagree; it never trusts the client (nginx and Apache parse the request, the module reads
their result)."""
from urllib.parse import quote

import pytest
import requests

from conftest import APACHE_MODULES, APPS, asgi_location, http_get, raw_request, route

SECURITY = APPS / "security.py"
RESPONSES = APPS / "responses.py"


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory(
        [route("= /length", f"{SECURITY}:length_from_query"),
         route("= /headers", f"{SECURITY}:headers_from_query"),
         route("= /status", f"{SECURITY}:status_from_query"),
         route("= /echo", f"{SECURITY}:request_headers"),
         route("/small/", f"{SECURITY}:request_headers", nginx="client_max_body_size 1k;",
               apache="LimitRequestBody 1024")],
    ).start()




def status_of(response):
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else None


def still_serving(server):
    assert requests.get(server.url("/echo")).status_code == 200


# The app's headers and status: nothing it sends can add a header line or end the head.

INJECTIONS = [
    ("X-A", "a\r\nX-Injected: 1", "contains a control character"),
    ("X-A", "a\nX-Injected: 1", "contains a control character"),
    ("X-A", "a\rX-Injected: 1", "contains a control character"),
    ("X-A", "a\x00X-Injected", "contains a control character"),
    ("X-A", "a\x0bX-Injected", "contains a control character"),
    ("X-A", "a\x7fX-Injected", "contains a control character"),
    ("Set-Cookie", "a=1\r\n\r\n<p>X-Injected", "contains a control character"),
    ("X-A\r\nX-Injected", "1", "is not an HTTP token"),
    ("X-A: b\r\nX-Injected", "1", "is not an HTTP token"),
    ("X-A:", "X-Injected", "is not an HTTP token"),
    ("X-Injected Name", "1", "is not an HTTP token"),
    ("X-Accel-Redirect", "/protected/hello.txt\r\nX-Injected: 1", "contains a control character"),
]


@pytest.mark.parametrize("name, value, why", INJECTIONS)
def test_a_header_from_the_app_cannot_inject_a_line(server, name, value, why):
    query = f"{quote(name, safe='', encoding='latin-1')}={quote(value, safe='', encoding='latin-1')}"
    data = raw_request(server.port, f"GET /headers?{query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status_of(data) == 500
    assert b"X-Injected" not in data
    assert why in server.error_log()
    still_serving(server)


@pytest.mark.parametrize("status", ["200 OK\r\nX-Injected: 1", "200 OK\nX-Injected: 1", "200 OK\x00X-Injected",
                                    "200 X-Injected\r\n\r\n<p>", "200\r\nX-Injected: 1"])
def test_a_status_from_the_app_cannot_inject_a_line(server, status):
    data = raw_request(server.port, f"GET /status?status={quote(status, safe='', encoding='latin-1')} HTTP/1.1\r\n"
                                    "Host: t\r\nConnection: close\r\n\r\n".encode())
    assert status_of(data) == 500
    assert b"X-Injected" not in data
    assert 'is not "NNN Reason-Phrase"' in server.error_log()


def test_spaces_around_a_header_value_stay_off_the_wire(server, nginx_factory):
    # They are no part of the value (RFC 9110 5.5), and over HTTP/2 they make the response
    # malformed (RFC 9113 8.2.1): gunicorn and nginx's proxy strip them.
    asgi = nginx_factory(asgi_location("/", f"{SECURITY}:asgi_headers_from_query")).start()
    for srv in (server, asgi):
        data = raw_request(srv.port, b"GET /headers?X-Pad=%20%09two%20words%09%20&X-Blank=%20%20 HTTP/1.1\r\n"
                                     b"Host: t\r\nConnection: close\r\n\r\n")
        head = data.partition(b"\r\n\r\n")[0] + b"\r\n"
        assert head.startswith(b"HTTP/1.1 200 "), data
        assert b"\r\nX-Pad: two words\r\n" in head and b"\r\nX-Blank: \r\n" in head, head


# The app's Content-Length: one reading, shared by the module and the server.

@pytest.mark.parametrize("length", ["9223372036854775808", "18446744073709551615", "18446744073709551616",
                                    "+5", "-1", "5,5", "5, 5", "0x5", "5 5"])
def test_an_app_content_length_the_server_cannot_hold_is_a_500(server, length):
    needle = f'Content-Length "{length}" is not a length'
    before = server.error_log().count(needle)
    status, _, body = http_get(server, f"/length?length={quote(length, safe='')}")
    assert status == 500 and b"12345" not in body
    assert server.error_log().count(needle) == before + 1, server.error_log()[-3000:]


@pytest.mark.parametrize("length, sent", [("5", "5"), ("%205%20", "5"), ("005", "5"),
                                          ("9223372036854775807", "9223372036854775807")])
def test_a_valid_app_content_length_is_the_length_on_the_wire(server, length, sent):
    data = raw_request(server.port, f"GET /length?length={length} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"\r\nContent-Length: {sent}\r\n".encode() in head + b"\r\n"
    # Five bytes: the whole body, or (for the largest length) what there is before the cut.
    assert body == b"12345"


# The client's headers: what the server refuses never reaches the app; what the server passes
# cannot pose as another header or as the server's own data.

def echo(server, head, body=b""):
    data = raw_request(server.port, b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + head + b"\r\n" + body)
    return status_of(data), data.partition(b"\r\n\r\n")[2]


def test_underscored_headers_cannot_pose_as_their_dashed_twins(server):
    status, body = echo(server, b"X-Forwarded-For: 10.0.0.1\r\nX_Forwarded_For: 6.6.6.6\r\n"
                                b"Content_Length: 100\r\nTransfer_Encoding: chunked\r\nContent_Type: evil\r\n"
                                b"Content-Length: 5\r\n", b"12345")
    assert status == 200
    lines = body.decode("latin-1").splitlines()
    assert "HTTP_X_FORWARDED_FOR=10.0.0.1" in lines
    assert "CONTENT_LENGTH=5" in lines and "read=5" in lines
    assert "6.6.6.6" not in body.decode("latin-1") and b"evil" not in body
    assert not [line for line in lines if line.startswith(("HTTP_TRANSFER", "CONTENT_TYPE", "HTTP_CONTENT"))]


@pytest.mark.parametrize("lengths", [[b"5", b"6"], [b"5", b"5"], [b"5, 6"], [b"5x"], [b"-1"], [b"+5"],
                                     [b"99999999999999999999999"]])
def test_a_request_with_a_bad_or_duplicate_content_length_never_reaches_the_app(server, lengths):
    head = b"".join(b"Content-Length: " + n + b"\r\n" for n in lengths)
    status, body = echo(server, head, b"123456")
    assert status == 400
    assert b"read=" not in body
    still_serving(server)


def test_content_length_with_chunked_encoding_cannot_smuggle_a_request(server):
    # The classic CL.TE desync: one server reads 6 bytes of body, another one reads a chunked body
    # of 0 bytes and then "GET /echo?smuggled ..." as the next request.
    smuggled = b"GET /echo?smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    data = raw_request(server.port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
    assert b"smuggled" not in data, "the bytes after the chunked body were served as a request"
    assert status_of(data) in (400, 200)
    if status_of(data) == 200:
        # Served as chunked (the length is dropped, as RFC 9112 says), and the connection closed.
        body = data.partition(b"\r\n\r\n")[2].decode("latin-1")
        assert "CONTENT_LENGTH=0" in body and "read=0" in body and "HTTP_TRANSFER_ENCODING" not in body
        assert data.count(b"HTTP/1.1 ") == 1


def test_x_accel_redirect_from_the_client_does_nothing(server):
    status, headers, body = http_get(server, "/headers?X-Plain=1", headers={
        "X-Accel-Redirect": "/protected/hello.txt", "X-Accel-Limit-Rate": "1", "X-Accel-Charset": "koi8-r"})
    assert (status, body) == (200, b"the app's own body\n")
    assert headers["Content-Type"] == "text/plain" and headers["X-Plain"] == "1"
    status, body = echo(server, b"X-Accel-Redirect: /protected/hello.txt\r\nContent-Length: 0\r\n")
    assert status == 200 and b"HTTP_X_ACCEL_REDIRECT=/protected/hello.txt" in body
    assert b"protected file contents" not in body


# Oversized requests: refused by the server before the app, the worker keeps serving.

def test_an_oversized_header_is_refused_before_the_app(server):
    status, body = echo(server, b"X-Big: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n")
    assert status in (400, 431, 494) and b"read=" not in body
    still_serving(server)


def test_too_many_headers_are_refused_before_the_app(server):
    head = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
    status, body = echo(server, head + b"Content-Length: 0\r\n")
    assert status in (400, 431, 494) and b"read=" not in body
    still_serving(server)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_an_oversized_body_is_refused_before_the_app(server, chunked):
    body = b"x" * 4096
    if chunked:
        head, payload = b"Transfer-Encoding: chunked\r\n", b"1000\r\n" + body + b"\r\n0\r\n\r\n"
    else:
        head, payload = b"Content-Length: 4096\r\n", body
    data = raw_request(server.port, b"POST /small/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + head + b"\r\n" + payload)
    assert status_of(data) == 413 and b"read=" not in data
    data = raw_request(server.port, b"POST /small/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                    b"Content-Length: 1000\r\n\r\n" + body[:1000])
    assert status_of(data) == 200 and b"read=1000" in data


# The metrics location: its access rules hold however it is reached.

class Metrics:
    """A metrics location open to `allowed` only (nginx: allow/deny; Apache: Require ip)."""

    def __init__(self, path, allowed):
        self.path, self.allowed = path, allowed

    def for_nginx(self):
        return f"  location = {self.path} {{ wsgi_status; allow {self.allowed}; deny all; }}\n"

    def for_apache(self):
        return f"<Location {self.path}>\n  SetHandler ngx-wsgi-status\n  Require ip {self.allowed}\n</Location>\n"


@pytest.fixture(scope="module")
def metrics_server(wsgi_factory):
    return wsgi_factory(
        [Metrics("/wsgi-metrics", "127.0.0.2"), Metrics("/open-metrics", "127.0.0.1"),
         route("/app/", f"{RESPONSES}:accel"), route("= /hello", f"{SECURITY}:headers_from_query")],
        apache=dict(server_extra=f"LoadModule authz_host_module {APACHE_MODULES}/mod_authz_host.so\n"),
    ).start()


@pytest.mark.parametrize("target", ["/wsgi-metrics", "/wsgi-metrics?x=1", "//wsgi-metrics", "/app/../wsgi-metrics",
                                    "/%77sgi-metrics", "/app/%2e%2e/wsgi-metrics"])
def test_a_denied_metrics_location_stays_denied_however_spelled(metrics_server, target):
    status, _, body = http_get(metrics_server, target)
    assert status == 403 and b"wsgi_responses_total" not in body


def test_an_app_cannot_redirect_a_client_into_a_denied_metrics_location(metrics_server):
    status, _, body = http_get(metrics_server, "/app/x?/wsgi-metrics")
    assert status == 403 and b"wsgi_responses_total" not in body
    status, _, body = http_get(metrics_server, "/app/x?/open-metrics")
    assert status == 200 and b"wsgi_responses_total" in body, "the allowed one answers"


def test_metrics_are_only_where_they_are_configured(metrics_server):
    status, _, body = http_get(metrics_server, "/hello?x=1")
    assert status == 200 and b"wsgi_responses_total" not in body
    status, _, body = http_get(metrics_server, "/open-metrics")
    assert status == 200 and b"wsgi_responses_total" in body
