"""Negative security tests: what a client or an app sends to get the server to do what it should
not. The module trusts the app (it runs inside the worker) but checks what the app hands the
server where a mistake would put bytes on the wire or leave a location; it never trusts the client
(nginx and Apache parse the request, the module only reads their result)."""
import http.client

import pytest

from conftest import APPS, raw_request, route

SECURITY = APPS / "security.py"


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory(
        [route("= /length", f"{SECURITY}:length_from_query")],
    ).start()


def get(server, target, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", target, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("length", ["9223372036854775808", "18446744073709551615", "18446744073709551616",
                                    "+5", "-1", "5,5", "5, 5", "0x5", "5 5"])
def test_an_app_content_length_the_server_cannot_hold_is_a_500(server, length):
    needle = f'Content-Length "{length}" is not a length'
    before = server.error_log().count(needle)
    status, _, body = get(server, f"/length?length={length.replace('+', '%2B').replace(' ', '%20')}")
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
