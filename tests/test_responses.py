"""Responses: start_response, write(), close(), bodiless statuses, Content-Length, chunking,
keep-alive and pipelining."""
import http.client
import os
import pathlib
import re
import socket

import httpx
import pytest
import requests

from conftest import APACHE_MODULES, APPS, location, raw_request, read_until, route, wait_for

APP = APPS / "responses.py"
SYSFS_FILE = pathlib.Path("/sys/devices/system/cpu/online")
NAMES = ["list_body", "generator_body", "write_then_iterable", "closing", "close_count", "lazy_start",
         "exc_info_before_body", "exc_info_after_body", "status", "length_app", "length_longer_than_body",
         "length_shorter_than_body", "file_wrapper", "big", "plain", "pregzipped", "empty_with_length",
         "accel", "file_wrapper_from_position", "file_wrapper_limited", "file_wrapper_bytesio",
         "file_wrapper_proc", "endless_with_length", "file_wrapper_validated", "file_wrapper_sysfs",
         "two_types", "connection_headers", "file_wrapper_gzip", "file_wrapper_lying_fileno",
         "file_wrapper_temporary", "file_wrapper_subclass", "file_wrapper_blocks", "file_wrapper_shouting_file",
         "head_skips_the_body",
         "json_with_length"]


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory(
        [route(f"= /{n}", f"{APP}:{n}") for n in NAMES]
        + [route("= /sendfile_wrapper", f"{APP}:file_wrapper", "sendfile on;", "EnableSendfile On")],
        nginx=dict(http_extra="gzip on; gzip_types application/json text/html; gzip_min_length 1; "
                              "charset_types text/html;"),
        apache=dict(server_extra=f"LoadModule filter_module {APACHE_MODULES}/mod_filter.so\n"
                                 f"LoadModule deflate_module {APACHE_MODULES}/mod_deflate.so\n"
                                 "AddOutputFilterByType DEFLATE application/json text/html\n"),
    ).start()


@pytest.fixture(scope="module")
def nginx_server(nginx_factory):
    """nginx's own location machinery around an app: limit_except, if, X-Accel-Redirect."""
    return nginx_factory(
        "".join(location(f"= /{n}", f"{APP}:{n}") for n in ["accel", "plain"])
        + location("/guarded/", f"{APP}:plain", "limit_except GET { deny all; }")
        + location("/with_if/", f"{APP}:plain", 'if ($arg_flag) { set $x 1; }')
        + f"  location /protected/ {{ internal; alias {APPS}/protected/; }}\n"
        + '  location @named { return 200 "named location $request_method\\n"; }\n',
    ).start()


def test_nginx_directives_rewrite_the_apps_cache_headers_as_a_proxied_apps(nginx_factory):
    # nginx's `expires` replaces a proxied app's Expires and Cache-Control; for the module's
    # app it added its own beside them (two of each, saying opposite things). gzip drops the
    # Accept-Ranges of a body it compresses (a range of the compressed body is not one of the
    # app's); the module's stayed.
    server = nginx_factory(
        location("= /expires", f"{APP}:cache_headers", "expires 1h;")
        + location("= /gzip", f"{APP}:cache_headers",
                   "gzip on; gzip_types text/html; gzip_min_length 1;")).start()
    r = requests.get(server.url("/expires"))
    assert r.status_code == 200
    assert r.raw.headers.getlist("Cache-Control") == ["max-age=3600"]
    assert len(r.raw.headers.getlist("Expires")) == 1
    assert r.headers["Expires"] != "Thu, 01 Jan 1970 00:00:00 GMT"
    r = requests.get(server.url("/gzip"), headers={"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip"
    assert "Accept-Ranges" not in r.headers
    assert r.raw.headers.getlist("Cache-Control") == ["no-store", "private"]


def test_list_body_gets_a_content_length_and_keeps_repeated_headers(server):
    r = requests.get(server.url("/list_body"))
    assert r.status_code == 200 and r.content == b"hello world"
    assert r.headers["Content-Length"] == "11"
    assert r.headers["X-Multi"] == "a, b"
    assert r.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert r.headers["Content-Type"] == "text/plain"


def test_the_connections_headers_of_an_app_are_dropped_not_a_500(server):
    # The connection and its framing are the server's: as nginx drops them from a proxied
    # response (and gunicorn from an app's), the app's Connection, Keep-Alive,
    # Transfer-Encoding, Upgrade, TE and Trailers change nothing.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(2):
        conn.request("GET", "/connection_headers")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"served"
        assert r.getheader("X-Kept") == "yes"
        assert "timeout=99" not in (r.getheader("Keep-Alive") or "")
        assert r.getheader("Connection", "").lower() != "close"
        assert r.getheader("Content-Length") == "6" and r.getheader("Transfer-Encoding") is None
        assert r.getheader("Upgrade") is None and r.getheader("Trailers") is None
        assert r.getheader("Proxy-Connection") is None
    conn.close()


def test_a_second_content_type_is_not_sent(server):
    # One type per response, not two on the wire (which clients join into one that parses as
    # neither): nginx keeps the first, as for a proxied response, and logs the other; Apache
    # the last, as mod_wsgi does.
    r = requests.get(server.url("/two_types"))
    assert r.status_code == 200 and r.content == b"{}"
    assert r.raw.headers.getlist("Content-Type") == (
        ["text/plain"] if server.kind == "nginx" else ["application/json"])
    assert r.headers["X-Before"] == "1" and r.headers["X-After"] == "2"
    if server.kind == "nginx":
        wait_for(lambda: 'the app sent a second Content-Type, "application/json"; the first is kept'
                 in server.error_log(), what="the warning")


def closes_slowly_server(nginx_factory, tmp_path, extra="", server_extra=""):
    """nginx with the app whose close() waits for the test's word (`extra` in its location)."""
    return nginx_factory(location("= /closes_slowly", f"{APP}:closes_slowly", extra)
                         + location("= /plain", f"{APP}:plain"),
                         main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};", server_extra=server_extra).start()


def whole_chunked_response(s, target):
    """Sends GET `target` on `s`; returns the response once its last chunk came."""
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = read_until(s, b"\r\n0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n0\r\n\r\n"), data
    return data


def plain_answered(s):
    s.sendall(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
    data = read_until(s, b"method=GET")
    assert data.startswith(b"HTTP/1.1 200") and b"method=GET" in data, data


def test_a_streamed_body_ends_before_its_close_returns(nginx_factory, tmp_path):
    # nginx: the client gets the last chunk once the iterable is exhausted, not after close()
    # (as under gunicorn); the connection's next request waits for close() to return.
    server = closes_slowly_server(nginx_factory, tmp_path)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        data = whole_chunked_response(s, "/closes_slowly")
        assert b"Transfer-Encoding: chunked" in data, data
        assert b"part 1\n" in data and b"part 2\n" in data, data
        assert not (tmp_path / "closed").exists(), "close() is still running"
        (tmp_path / "release-close").touch()
        plain_answered(s)
    assert (tmp_path / "closed").exists()
    assert "[alert]" not in server.error_log() and "[error]" not in server.error_log()


@pytest.mark.parametrize("query", ["", "length"], ids=["chunked", "content-length"])
def test_a_client_that_closes_after_the_whole_response_is_not_logged_as_gone(nginx_factory, tmp_path, query):
    # It closes while the app's close() still runs (Django's request-finished work): it had
    # everything, and nginx's test logged "client prematurely closed connection" (19 of 20
    # Django responses in a probe).
    server = closes_slowly_server(nginx_factory, tmp_path)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"GET /closes_slowly?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        data = read_until(s, b"\r\n0\r\n\r\n" if not query else b"part 2\n")
        assert data.startswith(b"HTTP/1.1 200") and b"part 1\n" in data, data
    # The one worker has seen the close by the time it answers a request sent after it.
    requests.get(server.url("/plain"), timeout=10)
    assert not (tmp_path / "closed").exists(), "close() is still running"
    (tmp_path / "release-close").touch()
    wait_for(lambda: (tmp_path / "closed").exists(), what="close() to return")
    assert "prematurely closed" not in server.error_log(), server.error_log()[-2000:]


@pytest.mark.parametrize("query", ["", "length"], ids=["chunked", "content-length"])
def test_an_http2_streamed_body_ends_before_its_close_returns(nginx_factory, tmp_path, query):
    # The stream's end (END_STREAM) went out only after close() when the body had its
    # Content-Length: an HTTP/2 client waited for Django's request_finished handlers.
    server = closes_slowly_server(nginx_factory, tmp_path, server_extra="http2 on;")
    with httpx.Client(http1=False, http2=True, timeout=10) as h2:
        r = h2.get(server.url(f"/closes_slowly?{query}"))
        assert (r.http_version, r.content) == ("HTTP/2", b"part 1\npart 2\n")
        assert not (tmp_path / "closed").exists(), "close() is still running"
        (tmp_path / "release-close").touch()
    wait_for(lambda: (tmp_path / "closed").exists(), what="close() to return")


def test_a_deadline_in_close_after_the_end_does_not_cut_the_response(nginx_factory, tmp_path):
    # wsgi_read_timeout passes while close() runs, after the body's end went out: close() is
    # interrupted, the response stays whole and the connection serves its next request.
    server = closes_slowly_server(nginx_factory, tmp_path, "wsgi_read_timeout 300ms;")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        whole_chunked_response(s, "/closes_slowly")
        wait_for(lambda: "the response iterable's close() raised" in server.error_log(),
                 what="close() interrupted by the deadline")
        assert "TimeoutError" in server.error_log()
        plain_answered(s)
    assert not (tmp_path / "closed").exists()


def test_generator_is_chunked_on_http11(server):
    r = requests.get(server.url("/generator_body"))
    assert r.content == b"chunk0;chunk1;chunk2;"
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in r.headers


def test_http10_never_gets_chunked(server):
    data = raw_request(server.port, b"GET /generator_body HTTP/1.0\r\nHost: t\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert body == b"chunk0;chunk1;chunk2;"


def test_write_and_iterable_combine(server):
    assert requests.get(server.url("/write_then_iterable")).content == b"written;returned"


def test_close_is_called_exactly_once(server):
    for _ in range(3):
        assert requests.get(server.url("/closing?c1")).content == b"ab"
    assert requests.head(server.url("/closing?c2")).status_code == 200
    assert requests.get(server.url("/close_count?c1")).text == "3"
    # A HEAD response is complete at its head, which leaves with the first piece of a streamed
    # body: the client can be answered before the app's thread reaches close().
    wait_for(lambda: requests.get(server.url("/close_count?c2")).text != "0", what="close() after HEAD")
    assert requests.get(server.url("/close_count?c2")).text == "1"


def test_iteration_stops_once_the_content_length_is_produced(server):
    r = requests.get(server.url("/endless_with_length"), timeout=10)
    assert (r.status_code, r.content) == (200, b"1234512345")
    wait_for(lambda: requests.get(server.url("/close_count?endless")).text == "1", what="close()")


def test_start_response_may_come_from_the_iterator(server):
    r = requests.get(server.url("/lazy_start"))
    assert (r.status_code, r.content) == (201, b"lazy")


def test_exc_info_replaces_headers_before_the_body(server):
    r = requests.get(server.url("/exc_info_before_body"))
    assert r.status_code == 503 and r.content == b"replaced"
    assert r.headers.get("X-After") == "1" and "X-Before" not in r.headers


def test_exc_info_after_the_body_started_cuts_the_response(server):
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(server.url("/exc_info_after_body"))
    assert "too late" in server.error_log()


def test_head_has_no_body(server):
    data = raw_request(server.port, b"HEAD /list_body HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
    # The body the app made for the HEAD (GET's) gives the length GET has.
    length = requests.get(server.url("/list_body")).headers["Content-Length"]
    assert f"\r\nContent-Length: {length}\r\n".encode() in head + b"\r\n", head
    data = raw_request(server.port, b"HEAD /length_app HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Length: 5" in head and body == b""


def test_a_head_keeps_the_length_the_app_declared_for_get(server):
    # An app that skips the body of a HEAD (Django's and Werkzeug's servers do the dropping,
    # some views do it themselves) still says GET's length: Apache put the length of what it saw.
    data = raw_request(server.port, b"HEAD /head_skips_the_body HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"\r\nContent-Length: 100\r\n" in head + b"\r\n" and body == b""
    assert len(requests.get(server.url("/head_skips_the_body")).content) == 100


def test_a_head_of_a_compressed_response_says_what_get_says(server):
    # The HEAD's body (as long as the app declared) goes through the compression filter as
    # GET's does: the HEAD dropped before it said neither the encoding nor the compressed length.
    gzip = {"Accept-Encoding": "gzip"}
    get = requests.get(server.url("/json_with_length"), headers=gzip)
    head = requests.head(server.url("/json_with_length"), headers=gzip)
    assert get.headers.get("Content-Encoding") == "gzip"
    assert [head.headers.get(h) for h in ("Content-Encoding", "Vary")] == \
        [get.headers.get(h) for h in ("Content-Encoding", "Vary")], (head.headers, get.headers)


@pytest.mark.parametrize("code", ["204", "304"])
def test_bodiless_statuses(server, code):
    data = raw_request(server.port, f"GET /status?{code} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {code} ".encode())
    assert body == b""
    assert b"chunked" not in head.lower()


def test_custom_reason_phrase_is_kept(server):
    data = raw_request(server.port, b"GET /status?299 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 299 Custom Thing\r\n")


def test_content_length_is_honoured_both_ways(server):
    r = requests.get(server.url("/length_app"))
    assert r.headers["Content-Length"] == "5" and r.content == b"hello"
    r = requests.get(server.url("/length_shorter_than_body"))
    assert r.headers["Content-Length"] == "3" and r.content == b"abc"
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        requests.get(server.url("/length_longer_than_body"))


@pytest.mark.parametrize("path", ["/file_wrapper", "/sendfile_wrapper"])
def test_file_wrapper_sends_the_file(server, path):
    data = APP.read_bytes()
    r = requests.get(server.url(path))
    assert r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    r = requests.get(server.url(path), headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.content) == (206, data[10:20])
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    # RFC 9110 defines ranges for GET alone: a POST's Range is ignored (a download button's form).
    r = requests.post(server.url(path), headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.content, r.headers.get("Content-Range")) == (200, data, None)
    # HEAD: the length and ranges GET has (the file's size is known), no body.
    got = requests.get(server.url(path)).headers.get("Accept-Ranges")
    r = requests.head(server.url(path))
    assert (r.headers["Content-Length"], r.headers.get("Accept-Ranges"), r.content) == (str(len(data)), got, b"")


@pytest.mark.parametrize("if_range, ranged", [
    ('"v1"', True), ("Wed, 01 Jan 2025 00:00:00 GMT", True),
    ('"v0"', False), ("Thu, 02 Jan 2025 00:00:00 GMT", False), ('W/"v1"', False),
])
def test_if_range_resumes_a_download_only_of_the_same_file(server, if_range, ranged):
    # A resumed download (browsers, curl -C) sends If-Range with the ETag or Last-Modified it
    # had: the rest of the same file, else all of the new one.
    data = APP.read_bytes()
    r = requests.get(server.url("/file_wrapper_validated"), headers={"Range": "bytes=10-19", "If-Range": if_range})
    if ranged:
        assert (r.status_code, r.content) == (206, data[10:20])
    else:
        assert (r.status_code, r.content) == (200, data)
    head = raw_request(server.port, b"GET /file_wrapper_validated HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                       b"If-None-Match: \"v1\"\r\n\r\n").partition(b"\r\n\r\n")[0]
    # The app's validators as it sent them, once; its 200 stays a 200 (conditionals are its own).
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert head.lower().count(b"\r\netag: \"v1\"") == 1, head
    assert head.lower().count(b"\r\nlast-modified: wed, 01 jan 2025 00:00:00 gmt") == 1, head


def test_file_wrapper_honours_position_and_length(server):
    data = APP.read_bytes()
    assert requests.get(server.url("/file_wrapper_from_position")).content == data[100:]
    r = requests.get(server.url("/file_wrapper_limited"))
    assert (r.headers["Content-Length"], r.content) == ("50", data[:50])
    assert requests.get(server.url("/file_wrapper_bytesio")).content == b"in memory, " * 1000
    # A file whose size the file system does not know (procfs: 0) is sent with what it has.
    assert requests.get(server.url("/file_wrapper_proc")).content == pathlib.Path("/proc/version").read_bytes()
    # Nor does sysfs (a page, whatever the file has).
    assert requests.get(server.url("/file_wrapper_sysfs")).content == SYSFS_FILE.read_bytes()


def test_file_wrapper_sends_what_read_gives_not_what_a_descriptor_holds(server):
    # A file whose read() transforms its descriptor's bytes (gzip.open, a subclass of a file's
    # type), or whose fileno() is another file's, is sent by iterating read(); a proxy holding a real file in `.file`
    # (tempfile's, Django's File) is the file, sent by the server (its length known).
    assert requests.get(server.url("/file_wrapper_gzip")).content == b"the content, " * 1000
    assert requests.get(server.url("/file_wrapper_lying_fileno")).content == b"mine, " * 100
    assert requests.get(server.url("/file_wrapper_subclass")).content == APP.read_bytes().upper()
    assert requests.get(server.url("/file_wrapper_shouting_file")).content == APP.read_bytes().upper()
    # A subclass that reads as its base does (Zope's filestream_iterator only iterates in its
    # own blocks) is a file too, sent with its length (iterated, it was chunked).
    r = requests.get(server.url("/file_wrapper_blocks"))
    assert (r.content, r.headers.get("Content-Length")) == (APP.read_bytes(), str(len(APP.read_bytes())))
    r = requests.get(server.url("/file_wrapper_temporary"))
    assert (r.content, r.headers.get("Content-Length")) == (b"spooled, " * 1000, str(9000))


@pytest.mark.parametrize("sendfile", ["on", "off"])
def test_a_file_that_shrinks_while_sent_cuts_the_response_and_is_named_in_the_log(nginx_factory, tmp_path, sendfile):
    # nginx's alert names the file with its C string: its path, where the operator finds it (it
    # once ran on into the module's other constants, and then said only "wsgi.file_wrapper").
    server = nginx_factory(location("/", f"{APP}:file_wrapper_of_path"),
                           http_extra=f"sendfile {sendfile};").start()
    path = tmp_path / "big.bin"
    path.write_bytes(b"A" * (32 << 20))
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(f"GET /?{path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        got = s.recv(65536)
        head = got.partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % (32 << 20) in head, head
        os.truncate(path, 1 << 20)
        while chunk := s.recv(1 << 20):
            got += chunk
    assert len(got) < (32 << 20), "cut short, not padded"
    wait_for(lambda: "[alert]" in server.error_log(), what="nginx's alert")
    alert = next(line for line in server.error_log().splitlines() if "[alert]" in line)
    assert re.search(r'(reported that|from) "%s"( was truncated|, client)' % re.escape(str(path)), alert), alert
    assert requests.get(server.url(f"/?{path}"), timeout=10).content == b"A" * (1 << 20)


def test_file_wrapper_files_are_closed(server):
    worker = server.worker_pids()[0]
    requests.get(server.url("/file_wrapper"))
    before = len(os.listdir(f"/proc/{worker}/fd"))
    for _ in range(30):
        requests.get(server.url("/file_wrapper"))
        requests.get(server.url("/sendfile_wrapper"))
    assert len(os.listdir(f"/proc/{worker}/fd")) <= before + 2


def test_large_body(server):
    r = requests.get(server.url("/big"))
    assert r.content == bytes(range(256)) * 4096 * 4


def test_keepalive_reuses_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for path in ["/list_body", "/generator_body", "/length_app", "/status?204", "/list_body"]:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status in (200, 204)
    sock = conn.sock
    conn.request("GET", "/list_body")
    assert conn.getresponse().read() == b"hello world"
    assert conn.sock is sock


def test_pipelined_requests_answer_in_order(server):
    reqs = b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                    for p in ["/list_body", "/generator_body", "/status?404"])
    data = raw_request(server.port, reqs + b"GET /length_app HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert data.count(b"HTTP/1.1 ") == 4
    first, second, third, fourth = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and first.endswith(b"hello world")
    assert second.startswith(b"200") and b"chunk2;" in second
    assert third.startswith(b"404 Not Found") and b"body" in third
    assert fourth.startswith(b"200") and fourth.endswith(b"hello")


def test_client_gone_before_response(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    assert requests.get(server.url("/list_body")).content == b"hello world"


def test_app_answers_conditionals_itself(server):
    r = requests.get(server.url("/plain"), headers={"If-None-Match": "*"})
    assert r.status_code == 200
    r = requests.put(server.url("/plain"), headers={"If-Match": '"v1"'}, data=b"x")
    assert (r.status_code, r.text) == (200, 'method=PUT if-match="v1"')
    r = requests.get(server.url("/plain"), headers={"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"})
    assert r.status_code == 200


def test_content_type_charset_kept_and_filters_see_the_type(server):
    r = requests.get(server.url("/plain"), headers={"Accept-Encoding": "gzip"})
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    if server.kind == "nginx":
        # mod_deflate does not compress a body this small, whatever its configuration.
        assert r.headers.get("Content-Encoding") == "gzip", "gzip_types text/html matched the typed value"
    assert r.text.startswith("method=GET")


def test_already_encoded_body_is_not_compressed_again(server):
    import gzip
    r = requests.get(server.url("/pregzipped"), headers={"Accept-Encoding": "gzip"}, stream=True)
    raw = r.raw.read(decode_content=False)
    assert r.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == b'{"already": "compressed"}' * 100


def test_empty_body_short_of_its_length_still_sends_the_header(server):
    data = raw_request(server.port, b"GET /empty_with_length HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 10" in data
    assert data.endswith(b"\r\n\r\n"), "no body bytes, then the connection is cut"


def test_limit_except_and_if_blocks_serve_the_same_app(nginx_server):
    server = nginx_server
    assert requests.get(server.url("/guarded/x")).text == "method=GET if-match=None"
    assert requests.post(server.url("/guarded/x")).status_code == 403
    assert requests.get(server.url("/with_if/x?flag=1")).text == "method=GET if-match=None"
    assert requests.get(server.url("/with_if/x")).text == "method=GET if-match=None"


def test_x_accel_redirect_serves_the_internal_location(nginx_server):
    server = nginx_server
    r = requests.get(server.url("/accel?/protected/hello.txt"))
    assert r.status_code == 200
    assert r.text == "protected file contents\n"
    assert r.headers["Content-Disposition"] == "attachment; filename=hello.txt"
    # The app's type, as behind proxy_pass (an app serving files stored without an extension
    # sets the one it knows).
    assert r.headers["Content-Type"] == "text/html"
    assert "X-Accel-Redirect" not in r.headers
    assert requests.post(server.url("/accel?/protected/hello.txt"), data=b"x").text == "protected file contents\n"
    assert requests.get(server.url("/protected/hello.txt")).status_code == 404
    assert requests.get(server.url("/accel?@named")).text == "named location GET\n"
    assert requests.get(server.url("/accel?/protected/missing.txt")).status_code == 404
