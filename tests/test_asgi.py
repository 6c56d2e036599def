"""ASGI 3 apps under `asgi_app`: the configuration check, the scope, receive/send with
backpressure, client disconnects, misbehaving apps, lifespan, reload and quit; and the same
answers as uvicorn for Starlette and FastAPI apps."""
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as websockets_connect

from conftest import (APPS, BAD_CHUNKS, asgi_location as asgi, assert_broken_chunk_is_400, location, post_3000_bytes,
                      assert_unanswered, raw_request, read_until, recv_until, send_chunks, wait_for)

APP = APPS / "asgi_app.py"
BAD = APPS / "asgi_bad.py"




@pytest.fixture(scope="module")
def server(nginx_factory, tmp_path_factory):
    marks = tmp_path_factory.mktemp("asgi-marks")
    s = nginx_factory(
        asgi("/mount/", APP)
        + asgi("/", APP)
        + asgi("= /scope-exact", APP)
        + asgi("/small/", APP, "wsgi_stream_buffer 64k;")
        + asgi("/unbuffered/", APP, "wsgi_request_buffering off; wsgi_stream_buffer 64k; client_max_body_size 1m;")
        + asgi("/limited/", APP, "client_max_body_size 1k;")
        + asgi("/impatient/", APP, "send_timeout 300ms;")
        + asgi("/nopathsend/", APP, "asgi_pathsend off;")
        + location("/wsgi/", APPS / "environ_app.py"),
        main_extra=f"env NGX_WSGI_TEST_MARKS={marks};",
        http_extra="asgi_pathsend on;",
        server_extra="http2 on; client_max_body_size 8m;",
    ).start()
    s.marks = marks
    return s


def stats(server):
    return requests.get(server.url("/stats"), timeout=10).json()


# --- the configuration check -------------------------------------------------------------

@pytest.mark.parametrize("spec,message", [
    (f"{APPS}/asgi_kinds.py:asgi2_class", "is an ASGI 2 application"),
    (f"{APPS}/asgi_kinds.py:asgi2_function", "is an ASGI 2 application"),
    (f"{APPS}/asgi_kinds.py:two_arguments", "cannot be called as app(scope, receive, send)"),
    (f"{APPS}/asgi_kinds.py:not_callable", "is not callable"),
    (f"{APPS}/asgi_kinds.py:missing", "looking for the ASGI callable"),
    (f"{APPS}/broken/syntax_error.py", "SyntaxError"),
    (f"{APPS}/asgi_lifespan.py:reports_failure", "lifespan startup failed: no configuration file"),
    (f"{APPS}/asgi_lifespan.py:starlette_fails", "RuntimeError: no database at startup"),
])
def test_nginx_t_refuses_what_cannot_be_served_naming_the_directive(nginx_factory, spec, message):
    server = nginx_factory(asgi("/", spec))
    result = server.run("-t")
    assert result.returncode != 0, result.stderr
    assert f'asgi_app "{spec}" (in {server.conf}:' in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def test_the_callable_defaults_to_app_and_bad_values_are_refused(nginx_factory):
    assert nginx_factory(asgi("/", APPS / "asgi_kinds.py")).run("-t").returncode == 0
    for bad, message in [("asgi_app a.py:1x;", "is not a Python name"),
                         ("asgi_event_loop trio;", "expected asyncio or uvloop")]:
        where = bad if bad.startswith("asgi_app") else ""
        http = "" if where else bad
        server = nginx_factory(f"  location / {{ {where} }}\n", http_extra=http)
        result = server.run("-t")
        assert result.returncode != 0 and message in result.stderr, result.stderr
    both = nginx_factory(f"  location / {{ asgi_app {APP}; wsgi_app {APPS}/sleepy.py; }}\n").run("-t")
    assert both.returncode != 0 and "is duplicate" in both.stderr, both.stderr


def test_uvloop_when_asked_for_and_installed(nginx_factory):
    server = nginx_factory(asgi("/", APP), http_extra="asgi_event_loop uvloop;").start()
    assert requests.get(server.url("/loop"), timeout=10).text == "uvloop"
    default = nginx_factory(asgi("/", APP)).start()
    assert requests.get(default.url("/loop"), timeout=10).text.startswith("asyncio")
    # Subprocesses on either loop: piped, waited for, killed (the loop's thread has no signals).
    for s in (server, default):
        assert requests.get(s.url("/subprocess"), timeout=30).json() == [200000, 0, -9]
    # Without the virtualenv (Debian's python3 alone) there is no uvloop: nginx -t says so.
    result = nginx_factory(asgi("/", APP), http_extra="asgi_event_loop uvloop;", home=False).run("-t")
    assert result.returncode != 0 and "asgi_event_loop uvloop" in result.stderr
    assert "No module named 'uvloop'" in result.stderr, result.stderr


# --- the scope ---------------------------------------------------------------------------

def scope_of(server, path, **kw):
    r = requests.request(kw.pop("method", "GET"), server.url(path), timeout=10, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_absolute_form_target_names_the_host(server):
    # As for WSGI (test_environ.py): the target's authority, by which nginx chose the server.
    for target, host, expected in [(b"http://good.example:8080/scope?a=1", b"Host: evil.example\r\n", "good.example:8080"),
                                   (b"http://good.example/scope?a=1", b"", "good.example")]:
        version = b"HTTP/1.1" if host else b"HTTP/1.0"
        data = raw_request(server.port, b"GET " + target + b" " + version + b"\r\n" + host + b"Connection: close\r\n\r\n")
        s = json.loads(data.partition(b"\r\n\r\n")[2])
        hosts = [h[3] for h in s["headers"] if h[1] == "host"]
        assert hosts == [expected] and (s["path"], s["query_string"]) == ("/scope", "a=1"), s


def test_a_fragment_the_client_sent_is_in_no_part_of_the_scope(server):
    # nginx leaves a `#fragment` (which clients do not send) out of the path and the arguments.
    for target in (b"/scope#frag", b"/scope?x=1#frag"):
        data = raw_request(server.port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        s = json.loads(data.partition(b"\r\n\r\n")[2])
        assert (s["path"], s["raw_path"]) == ("/scope", "/scope") and "#" not in s["query_string"], s


def test_scope_of_a_prefix_location(server):
    s = scope_of(server, "/mount/scope/caf%C3%A9%20x?q=%20a&b", headers={"X-One": "1", "x-two": "2"})
    assert s["type"] == "http"
    assert s["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert (s["http_version"], s["method"], s["scheme"]) == ("1.1", "GET", "http")
    assert s["path"] == "/mount/scope/caf\u00e9 x"
    assert s["raw_path"] == "/mount/scope/caf%C3%A9%20x"
    assert s["query_string"] == "q=%20a&b"
    assert s["root_path"] == "/mount"
    # The mount without its slash: 301 to it, as for proxy_pass.
    r = requests.get(server.url("/mount?q=1"), allow_redirects=False, timeout=10)
    assert r.status_code == 301 and r.headers["Location"].endswith("/mount/?q=1")
    names = [h[1] for h in s["headers"]]
    assert names[:1] == ["host"] and "x-one" in names and "x-two" in names
    assert names.index("x-one") < names.index("x-two"), "arrival order"
    assert all(h[0] == "bytes" and h[2] == "bytes" for h in s["headers"])
    assert s["client"][0] == "127.0.0.1" and isinstance(s["client"][1], int)
    assert s["server"] == ["127.0.0.1", server.port]
    assert s["state"] == ["pid", "shared"], "the lifespan's state"


def test_raw_path_is_the_changed_uri_after_a_rewrite_or_an_internal_redirect(nginx_factory):
    # As proxy_pass sends a changed URI: escaped, so that raw_path agrees with path (BlackSheep
    # routes on raw_path) and begins with root_path; an unchanged one is as the client sent it.
    server = nginx_factory(
        "  location /legacy/ { rewrite ^/legacy/(.*)$ /mount/$1 last; }\n"
        "  location = /missing { error_page 404 = /mount/scope/from-error-page; return 404; }\n"
        + asgi("/mount/", APP)).start()
    s = scope_of(server, "/legacy/scope/caf%C3%A9%20x?q=1")
    assert (s["path"], s["raw_path"], s["root_path"], s["query_string"]) == \
        ("/mount/scope/caf\u00e9 x", "/mount/scope/caf%C3%A9%20x", "/mount", "q=1")
    s = scope_of(server, "/missing")
    assert (s["path"], s["raw_path"]) == ("/mount/scope/from-error-page",) * 2
    # (requests would send %7E as ~)
    data = raw_request(server.port, b"GET /mount/scope/%7Eme HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    s = json.loads(data.partition(b"\r\n\r\n")[2])
    assert (s["path"], s["raw_path"]) == ("/mount/scope/~me", "/mount/scope/%7Eme")


def test_wsgi_params_with_http_names_set_request_headers_as_proxy_set_header_does(nginx_factory):
    # An ASGI app has no environ: `wsgi_param HTTP_*` sets the header (the client's of that name
    # never reaches the app, as with proxy_set_header); other names have no effect, and say so.
    server = nginx_factory(asgi("/", APP, "wsgi_param HTTP_X_REMOTE_USER $arg_user if_not_empty; "
                                          "wsgi_param HTTP_X_FORWARDED_PROTO https; "
                                          "wsgi_param HTTP_X_REQUEST_ID $request_id; "
                                          "wsgi_param REMOTE_USER $arg_user;")).start()

    def headers(path, **sent):
        s = scope_of(server, path, headers=sent)
        return [(h[1], h[3]) for h in s["headers"]]
    got = headers("/scope?user=alice", **{"X-Remote-User": "mallory", "X-Forwarded-Proto": "http"})
    assert [v for n, v in got if n == "x-remote-user"] == ["alice"], got
    assert [v for n, v in got if n == "x-forwarded-proto"] == ["https"], got
    assert [len(v) for n, v in got if n == "x-request-id"] == [32], got
    got = headers("/scope", **{"X-Remote-User": "mallory"})
    assert "x-remote-user" not in [n for n, _ in got], got
    assert 'wsgi_param "REMOTE_USER" has no effect in an asgi_app location' in server.error_log() + server.output()


def test_on_a_unix_socket_client_is_none_and_server_the_path(nginx_factory, tmp_path):
    sock = tmp_path / "app.sock"
    s = nginx_factory("", http_extra=f"server {{\n listen unix:{sock};\n{asgi('/', APP)} }}\n").start()
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(10)
        c.connect(str(sock))
        c.sendall(b"GET /scope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := c.recv(65536):
            response += chunk
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    scope = json.loads(body)
    assert scope["client"] is None and scope["server"] == [str(sock), None], "ASGI's unix socket values"
    assert s.stop() == 0


def test_root_path_at_the_root_exact_and_outside_the_mount(server):
    assert scope_of(server, "/scope")["root_path"] == ""
    assert scope_of(server, "/scope-exact")["root_path"] == ""
    # `/mountain` is not under `/mount/` (nginx routes it to `/`), nor is it split at `/mount`.
    outside = scope_of(server, "/mountain/scope")
    assert (outside["path"], outside["root_path"]) == ("/mountain/scope", "")


def test_repeated_headers_stay_separate_and_raw(server):
    raw = (b"GET /scope HTTP/1.1\r\nHost: t\r\nX-Dup: a\r\nX-DUP: b\r\nCookie: c=1\r\nCookie: d=2\r\n"
           b"Connection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(raw)
        data = read_until(s, b"}")
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    headers = [(h[1], h[3]) for h in body["headers"]]
    assert ("x-dup", "a") in headers and ("x-dup", "b") in headers
    assert ("cookie", "c=1") in headers and ("cookie", "d=2") in headers


def test_http_versions_and_tls_scheme(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    conn.request("GET", "/scope")
    assert json.loads(conn.getresponse().read())["http_version"] == "1.0"
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", server.url("/scope")],
                         capture_output=True, timeout=30, check=True)
    assert json.loads(out.stdout)["http_version"] == "2"


def test_state_is_copied_per_request_from_lifespan(server):
    first = requests.get(server.url("/state?one"), timeout=10).json()
    second = requests.get(server.url("/state?two"), timeout=10).json()
    assert first["pid"] == second["pid"] == server.worker_pids()[0]
    assert second["shared"][-2:] == ["one", "two"]


def test_wsgi_and_asgi_in_one_server_and_worker(server):
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/wsgi/x"), timeout=10).json()["PATH_INFO"] == "/x"
    assert scope_of(server, "/mount/scope")["state"] == ["pid", "shared"]
    assert server.worker_pids() == [worker]


# --- receive -------------------------------------------------------------------------------

def test_a_buffered_body_up_to_1_mib_is_one_message(server):
    body = os.urandom(300_000)
    r = requests.post(server.url("/echo"), data=body, timeout=10)
    assert r.content == body and r.headers["x-messages"] == "1"
    # Past 1 MiB (a body nginx keeps in its temp file): 1 MiB messages, read as the app asks.
    big = os.urandom(3 << 20)
    r = requests.post(server.url("/echo"), data=big, timeout=10)
    assert r.content == big and r.headers["x-messages"] == "3"
    r = requests.post(server.url("/echo"), data=iter([b"chunked ", b"body"]), timeout=10)
    assert r.content == b"chunked body" and r.headers["x-messages"] == "1"
    assert requests.get(server.url("/echo"), timeout=10).headers["x-messages"] == "1"


def test_client_max_body_size_applies(server):
    assert requests.post(server.url("/limited/echo"), data=b"x" * 2000, timeout=10).status_code == 413
    assert requests.post(server.url("/unbuffered/echo"), data=b"x" * (2 << 20), timeout=10).status_code == 413
    # A chunked body past the limit is cut while the app reads it: the app sees a disconnect,
    # the client nginx's 413, as when nginx reads the whole body first.
    r = requests.post(server.url("/unbuffered/upload-until-gone?over"), data=iter([b"y" * 65536] * 40), timeout=10)
    assert r.status_code == 413
    wait_for(lambda: stats(server)["disconnected"].get("over"), what="the app to see the cut")
    assert stats(server)["disconnected"]["over"].startswith("gone after")


@pytest.mark.parametrize("framing", ["chunked", "h2 stream"])
@pytest.mark.parametrize("prefix", ["", "/unbuffered"])
def test_a_body_nginx_read_whole_without_a_length_is_given_its_length(server, framing, prefix):
    # nginx de-chunked it before the app ran, as in front of a proxied uvicorn, which is then
    # sent its length: Django's multipart parser reads nothing of a body without one. One read
    # as it arrives keeps the request's framing (nobody knows its length yet).
    if prefix and framing == "chunked":
        answer = post_chunked_after_the_app_started(server, f"{prefix}/scope?framing")
    else:
        answer = post_3000_bytes(server.port, f"{prefix}/scope", framing)
    seen = json.loads(answer[answer.index(b"{"):])
    framing_headers = [(n, v) for _, n, _, v in seen["headers"] if n in ("content-length", "transfer-encoding")]
    assert seen["body"] == "x" * 3000
    if prefix:
        assert framing_headers == ([("transfer-encoding", "chunked")] if framing == "chunked" else []), framing_headers
    else:
        assert framing_headers == [("content-length", "3000")], framing_headers


def post_chunked_after_the_app_started(server, path):
    """POSTs 3000 bytes chunked to `path` (whose app records its reading under the query), the
    rest of the body only once the app reads it: nginx reads a body whole, as if buffered, when
    its first read finds all of it (a loaded or slow server: seen under ASan)."""
    key = path.split("?", 1)[1]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  f"Transfer-Encoding: chunked\r\n\r\n".encode() + b"1f4\r\n" + b"x" * 500 + b"\r\n")
        wait_for(lambda: stats(server)["receiving"].get(key) is not None, what="the app to read its body")
        s.sendall((b"1f4\r\n" + b"x" * 500 + b"\r\n") * 5 + b"0\r\n\r\n")
        return recv_until(s, b"}")


@pytest.mark.parametrize("key,bad", BAD_CHUNKS)
def test_a_malformed_chunk_while_the_app_reads_is_the_clients_400(server, key, bad):
    key = f"bad-{key}"
    assert_broken_chunk_is_400(server.port, f"/unbuffered/upload-until-gone?{key}",
                               lambda: stats(server)["receiving"].get(key) == 5, bad)
    assert stats(server)["disconnected"][key] == "gone after 5 bytes"


def test_unbuffered_body_arrives_as_it_comes_with_more_body(server):
    body = os.urandom(200_000)
    r = requests.post(server.url("/unbuffered/echo"), data=iter([body[:1000], body[1000:]]), timeout=10)
    assert r.content == body
    assert int(r.headers["x-messages"]) >= 2, "more_body messages, then the end"


def test_an_unbuffered_body_ends_with_its_last_bytes(server):
    # The second half arrives once the app has read the first: its message says more_body
    # false itself, with no empty message after it.
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /unbuffered/upload-until-gone?last1 HTTP/1.1\r\nHost: t\r\n"
                  b"Content-Length: 2000\r\nConnection: close\r\n\r\n" + b"a" * 1000)
        wait_for(lambda: stats(server)["receiving"].get("last1") == 1000, what="the first half read")
        s.sendall(b"b" * 1000)
        assert b"complete" in read_until(s, b"complete")
    messages = stats(server)["messages"]["last1"]
    assert sum(messages) == 2000 and 0 not in messages, messages


def test_unbuffered_body_pauses_the_client_while_the_app_does_not_read(server):
    # The app reads nothing until released: nginx stops reading at wsgi_stream_buffer (64k)
    # and the client's send blocks; after the release the whole body arrives.
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        total = 900_000
        s.sendall(b"POST /unbuffered/echo-slowly?up1 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
        s.setblocking(False)
        sent = 0
        payload = b"u" * 65536
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sent < total:
            try:
                sent += s.send(payload[: min(65536, total - sent)])
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < total, "the client was paused"
        s.setblocking(True)
        assert requests.get(server.url("/release?up1"), timeout=10).text == "released"
        s.sendall(b"u" * (total - sent))
        answer = read_until(s, b"\r\n\r\n" + str(total).encode())
    assert answer.endswith(str(total).encode()), answer


# --- send ----------------------------------------------------------------------------------

def test_streaming_is_chunked_and_http10_gets_no_chunks(server):
    r = requests.get(server.url("/stream?4"), timeout=10)
    assert r.text == "0\n1\n2\n3\n" and r.headers["transfer-encoding"] == "chunked"
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.sendall(b"GET /stream?3 HTTP/1.0\r\nHost: t\r\n\r\n")
    data = read_until(raw, b"NEVER")
    raw.close()
    assert data.endswith(b"\r\n\r\n0\n1\n2\n") and b"chunked" not in data.lower()


def test_each_piece_leaves_while_the_app_runs(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /hold?piece1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b"held\n" in read_until(s, b"held\n")
        assert requests.get(server.url("/release?piece1"), timeout=10).text == "released"
        assert read_until(s, b"0\r\n\r\n").endswith(b"released\n\r\n0\r\n\r\n")


def test_byte_strings_in_buffers_and_headers_as_lists(server):
    r = requests.get(server.url("/buffers"), timeout=10)
    assert (r.status_code, r.text) == (200, "from a bytearray\nfrom a memoryview")
    assert (r.headers["content-type"], r.headers["x-kind"]) == ("text/plain", "buffers")


def test_the_100_continue_comes_with_the_first_receive_and_never_for_a_body_left_unread(server):
    # The client waits for its 100 before it sends the body: the app's first receive() asks
    # for it. An app that answers without reading sends its answer alone.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /unbuffered/echo-slowly?cont1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert requests.get(server.url("/release?cont1"), timeout=10).text == "released"
        assert read_until(s, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        answer = read_until(s, b"NEVER")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n5"), answer
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /unbuffered/stream?2 HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        data = read_until(s, b"0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in data, data
    assert b"connection: close" in data.partition(b"\r\n\r\n")[0].lower(), data


def test_an_answer_before_an_unbuffered_body_is_in_says_the_connection_closes(server):
    # nginx closes the connection after a response whose body, still arriving, the app left
    # unread: a head that promised keep-alive would lose the client's next request on it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /unbuffered/stream?2 HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"y" * 10)
        data = read_until(s, b"0\r\n\r\n")
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200") and b"connection: close" in head, head


def test_the_head_leaves_with_an_empty_first_piece(server):
    # ASGI: the head may wait for the first body message, not for the first body byte; an event
    # stream's client (EventSource's onopen) must not wait for the first event.
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /hold-empty?piece2 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until(s, b"\r\n\r\n").startswith(b"HTTP/1.1 200 OK\r\n")
        assert requests.get(server.url("/release?piece2"), timeout=10).text == "released"
        assert read_until(s, b"0\r\n\r\n") == b"9\r\nreleased\n\r\n0\r\n\r\n"


def test_an_event_streams_head_leaves_at_its_start(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /late-event?sse1 HTTP/1.1\r\nHost: t\r\n\r\n")
        head = read_until(s, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"text/event-stream" in head, head
        assert requests.get(server.url("/release?sse1"), timeout=10).text == "released"
        assert read_until(s, b"0\r\n\r\n") == b"c\r\ndata: late\n\n\r\n0\r\n\r\n"


def test_responses_finished_before_a_blocking_task_do_not_wait_for_it(server):
    # Many tasks released in one round of the loop, the last of them blocking it for seconds: the
    # others' responses, finished before it, reach their clients while it blocks (under load the
    # wake-ups of a round are sent together when the round ends, which this round does late).
    key, fast = f"blocking-round-{os.getpid()}-{time.monotonic_ns()}", 32
    done = {}

    def get(path, name):
        r = requests.get(server.url(path), timeout=30)
        done[name] = (time.monotonic(), r.status_code, r.text)

    threads = [threading.Thread(target=get, args=(f"/after-release?{key}", i)) for i in range(fast)]
    for t in threads:
        t.start()
    wait_for(lambda: stats(server)["waiting"].get(key) == fast, what="the requests waiting")
    blocker = threading.Thread(target=get, args=(f"/blocks-after-release?{key}&6", "blocker"))
    blocker.start()
    wait_for(lambda: stats(server)["waiting"].get(key) == fast + 1, what="the blocker waiting")
    asked = time.monotonic()
    assert requests.get(server.url(f"/release?{key}"), timeout=10).text == "released"
    for t in threads + [blocker]:
        t.join(30)
    assert sorted(done, key=str) == sorted([*range(fast), "blocker"], key=str)
    assert {done[i][1:] for i in range(fast)} == {(200, "/after-release")}
    assert done["blocker"][1:] == (200, "/blocks-after-release")
    assert done["blocker"][0] - asked >= 6
    # Well inside the 6 s the blocker holds the loop (the bound is milliseconds).
    late = [i for i in range(fast) if done[i][0] - asked >= 3]
    assert not late, f"{len(late)} responses waited for the blocking task"


def test_statuses_headers_head_and_bodiless(server):
    r = requests.get(server.url("/headers"), timeout=10)
    assert r.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert r.headers["x-mixed-case"] == "v"
    # One type per response: the first counts (the second is logged), as for a proxied response.
    assert r.raw.headers.getlist("content-type") == ["text/plain; charset=utf-8"]
    for status in (201, 404, 418, 503, 299):
        r = requests.get(server.url(f"/status?{status}"), timeout=10)
        assert r.status_code == status and r.text == f"body of {status}"
    for status in (204, 304):
        r = requests.get(server.url(f"/status?{status}"), timeout=10)
        assert r.status_code == status and r.content == b""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", "/echo")
    r = conn.getresponse()
    assert (r.status, r.getheader("content-length"), r.read()) == (200, "0", b"")
    conn.request("GET", "/stream?2")
    assert conn.getresponse().read() == b"0\n1\n", "keep-alive after HEAD"


def test_a_head_is_whole_once_its_head_went_out(server):
    # Nothing of a HEAD's body reaches the client: the server ends the response with its head,
    # and the connection's next request is answered while the app still streams.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"HEAD /head-stream?h1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until(s, b"\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
        s.sendall(b"GET /status?201 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until(s, b"body of 201").startswith(b"HTTP/1.1 201")
        assert stats(server)["waiting"].get("h1") == "head sent", "the app still waits"
    requests.get(server.url("/release?h1"), timeout=10)
    wait_for(lambda: stats(server)["disconnected"].get("h1"), what="the app to finish")
    assert stats(server)["disconnected"]["h1"] == "complete", "its last piece is taken"
    # One of a known end runs to it, its pieces dropped (it raised at the first, and Datasette
    # printed a traceback for each HEAD of a CSV export).
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"HEAD /head-stream?h3-finite HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until(s, b"\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
    requests.get(server.url("/release?h3-finite"), timeout=10)
    wait_for(lambda: stats(server)["disconnected"].get("h3-finite"), what="the app to finish")
    assert stats(server)["disconnected"]["h3-finite"] == "complete"
    # An endless one is told, as if its client had gone, or it would stream into nothing for
    # ever; its client, there still, is not said to have gone.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"HEAD /head-stream?h2-endless HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until(s, b"\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
        requests.get(server.url("/release?h2-endless"), timeout=10)
        wait_for(lambda: stats(server)["disconnected"].get("h2-endless"), what="the app to finish")
        assert stats(server)["disconnected"]["h2-endless"] == "ClientDisconnected"
        s.sendall(b"GET /status?202 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until(s, b"body of 202").startswith(b"HTTP/1.1 202")
    assert not re.search(r"connection to the client ended.*HEAD /head-stream", server.error_log())
    # A GET whose client leaves is a disconnect, as before.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /head-stream?g1 HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(s, b"first\n")
    wait_for(lambda: re.search(r"connection to the client ended.*GET /head-stream\?g1", server.error_log()),
             what="nginx to see the client go")
    requests.get(server.url("/release?g1"), timeout=10)
    wait_for(lambda: stats(server)["disconnected"].get("g1"), what="the app to finish")
    assert stats(server)["disconnected"]["g1"] == "ClientDisconnected"


def test_hop_by_hop_headers_of_the_app_are_dropped(server):
    # sse-starlette sends connection: keep-alive on every event stream; the framing and the
    # connection are nginx's, as for a proxied upstream. ASGI allows them: dropped, not a 500.
    r = requests.get(server.url("/hop"), timeout=10)
    assert (r.status_code, r.content) == (200, b"hop")
    assert r.headers["x-kept"] == "yes"
    assert r.headers["proxy-authenticate"] == 'Basic realm="proxy"', "end to end, as from uvicorn"
    assert not {"keep-alive", "upgrade", "te", "trailers"} & {k.lower() for k in r.raw.headers}
    assert r.raw.headers.getlist("Connection") == ["keep-alive"], "nginx's own"
    assert r.headers["content-length"] == "3" and "transfer-encoding" not in r.headers


def test_pathsend_is_offered_only_where_asked_for(nginx_factory, tmp_path):
    # As under uvicorn, which offers no such extension: an app whose middleware drops its
    # messages (Gradio's) serves its files with the defaults.
    path = tmp_path / "asset.js"
    path.write_bytes(b"console.log('served');")
    path.chmod(0o644)
    server = nginx_factory(asgi("/", APP) + asgi("/on/", APP, "asgi_pathsend on;")).start()
    assert "http.response.pathsend" not in requests.get(server.url("/scope"), timeout=10).json()["extensions"]
    r = requests.get(server.url(f"/body-only-middleware?{path}"), timeout=10)
    assert (r.status_code, r.content) == (200, b"console.log('served');")
    assert "http.response.pathsend" in requests.get(server.url("/on/scope"), timeout=10).json()["extensions"]


def test_asgi_pathsend_off_for_a_middleware_that_drops_it(server, tmp_path):
    # Gradio's Brotli middleware passes on only http.response.body: a FileResponse's start and
    # pathsend are lost. The log says what to do; `asgi_pathsend off` is the cure.
    path = tmp_path / "asset.js"
    path.write_bytes(b"console.log('served');")
    path.chmod(0o644)
    r = requests.get(server.url(f"/body-only-middleware?{path}"), timeout=10)
    assert r.status_code == 500
    line = next(l for l in server.error_log().splitlines() if f"body-only-middleware?{path}" in l)
    assert "returned without sending http.response.start (if a middleware of the app drops " \
           "http.response.pathsend messages, `asgi_pathsend off;` stops offering them)" in line
    r = requests.get(server.url(f"/nopathsend/body-only-middleware?{path}"), timeout=10)
    assert (r.status_code, r.content) == (200, b"console.log('served');")
    assert "http.response.pathsend" not in requests.get(server.url("/nopathsend/scope")).json()["extensions"]
    assert "http.response.pathsend" in requests.get(server.url("/scope")).json()["extensions"]


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGQUIT])
def test_event_streams_end_cleanly_when_the_worker_exits(nginx_factory, how):
    # EventSource reconnects by itself: past wsgi_event_stream_grace, the stream ends as a
    # complete response and the client comes back to the new workers; the app's send() raises
    # as if it had gone.
    server = nginx_factory(asgi("/", APP), http_extra="wsgi_event_stream_grace 1s;").start()
    old = server.worker_pids()
    r = requests.get(server.url("/events?sse1"), stream=True, timeout=30)
    assert r.headers["content-type"] == "text/event-stream"
    lines = r.iter_lines()
    assert next(lines) == b"data: 0"
    plain = requests.get(server.url("/events?plain"), stream=True, timeout=30)
    plain_lines = plain.iter_lines()
    assert next(plain_lines) == b"data: 0"
    began = time.monotonic()
    server.send_signal(how)
    rest = list(lines)  # a cut response would raise ChunkedEncodingError here
    assert 0.9 < time.monotonic() - began < 10 and rest[-1:] in ([b""], [])
    wait_for(lambda: "events sse1: ClientDisconnected, then ClientDisconnected" in server.error_log(),
             what="the app to be told")
    log = server.error_log()
    assert "asgi: 1 event stream(s) (text/event-stream) ended as the worker exits, after 1000 ms of " \
           "grace (wsgi_event_stream_grace)" in log, log[-2000:]
    # A response that is not an event stream is in flight like any other: it goes on.
    assert next(line for line in plain_lines if line).startswith(b"data: ")
    plain.close()
    wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(), what="a clean exit")
    # (The app's own line about what it was told went to sys.stderr: an [error] entry.)
    errors = [line for line in server.error_log().splitlines()
              if "[error]" in line and "sys.stderr: events " not in line]
    assert errors == [] and "[alert]" not in server.error_log(), errors


def test_an_event_stream_ended_at_a_reload_closes_its_connection(nginx_factory):
    # Its head promised keep-alive: kept, the connection took the EventSource's reconnection
    # to the exiting worker, which served it for the 2 s of its drain.
    server = nginx_factory(asgi("/", APP), http_extra="wsgi_event_stream_grace 0;").start()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /events?sse-conn HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_until(s, b"data: 0").startswith(b"HTTP/1.1 200")
    server.send_signal(signal.SIGHUP)
    assert read_until(s, b"\r\n0\r\n\r\n").endswith(b"\r\n0\r\n\r\n")   # ended cleanly
    assert_unanswered(s, b"GET /events?again HTTP/1.1\r\nHost: t\r\n\r\n")
    s.close()


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGQUIT])
def test_an_event_stream_with_an_end_of_its_own_is_not_cut_short_by_a_reload(nginx_factory, how):
    # An answer streamed token by token (an LLM's, a Gradio job's progress) runs on to its end
    # across a reload or quit, as any response does: ended early, it would look complete to
    # its client with half its tokens.
    server = nginx_factory(asgi("/", APP)).start()
    r = requests.get(server.url("/answer?15"), stream=True, timeout=30)
    lines = r.iter_lines()
    assert next(lines) == b"data: token 0"
    server.send_signal(how)
    rest = [line for line in lines if line]
    assert rest == [b"data: token %d" % n for n in range(1, 15)] + [b"data: [DONE]"]
    assert "ended as the worker exits" not in server.error_log()


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGQUIT])
def test_an_event_stream_answering_a_post_runs_to_its_end_past_the_grace(nginx_factory, how):
    # An OpenAI-style completion or an MCP reply: its client cannot ask again, so the clean end
    # the grace gives an EventSource's GET would read as the whole answer (the openai client
    # took one cut at reload for complete). It runs on; the GET beside it still ends at once.
    # (25 tokens, 5 s: a reload's old workers begin their exit once the new ones have started.)
    server = nginx_factory(asgi("/", APP), http_extra="wsgi_event_stream_grace 0;").start()
    posted = requests.post(server.url("/answer?25"), json={"stream": True}, stream=True, timeout=30)
    tokens = posted.iter_lines()
    assert next(tokens) == b"data: token 0"
    listened = requests.get(server.url("/events?sse1"), stream=True, timeout=30)
    events = listened.iter_lines()
    assert next(events) == b"data: 0"
    server.send_signal(how)
    list(events)  # ends at once, cleanly (a cut would raise)
    rest = [line for line in tokens if line]
    assert rest == [b"data: token %d" % n for n in range(1, 25)] + [b"data: [DONE]"]
    # (Logged once the streams it ended are counted: after their clients may have read the end.)
    wait_for(lambda: "asgi: 1 event stream(s) (text/event-stream) ended as the worker exits" in server.error_log(),
             what="the count of the streams ended")


def test_an_error_page_started_after_a_head_client_left_hears_it_left(server):
    # `curl -I`, health checks: the client closes once it has the head. A small response's
    # pieces are dropped and it completes (as under uvicorn); a large one's piece past what is
    # dropped says the client left, and so does the error page its handler then starts, not a
    # protocol error.
    for key, length in (("h1", 12288), ("h2-big", 2048000)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
            c.sendall(f"HEAD /pieces-then-error-page?{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += c.recv(1)
        assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {length}".encode() in head
    wait_for(lambda: stats(server)["sent"].get("h1") == "complete", what="the small response's end")
    wait_for(lambda: "error page h2-big: ClientDisconnected, then ClientDisconnected" in server.error_log(),
             what="the app told twice")
    assert "sent a second time" not in server.error_log()
    assert "error page h1" not in server.error_log()


def test_a_receive_waiting_when_the_response_completes_says_disconnect(server):
    # As uvicorn does: the app's listener hears http.disconnect, so its task ends.
    for i in range(3):
        r = requests.get(server.url(f"/listens-while-sending?l{i}"), timeout=10)
        assert (r.status_code, r.content) == (200, b"sent while listening")
    wait_for(lambda: all(stats(server)["sent"].get(f"l{i}") == "returned" for i in range(3)),
             what="the app's tasks to end")
    assert all(stats(server)["disconnected"][f"l{i}"] == "http.disconnect" for i in range(3))


def test_a_client_that_had_the_whole_content_length_and_went_is_not_an_error(server):
    # Quart sends a response's body, then its closing message: a client that read the
    # Content-Length's bytes may close in between. The response was complete; the closing
    # message is taken, and the module logs nothing (nginx's own info line about the close
    # stays).
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(b"GET /whole-then-waits?w1 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while not got.endswith(b"\r\n\r\nwhole"):
            got += c.recv(4096)
    wait_for(lambda: stats(server)["disconnected"].get("w1") == "http.disconnect", what="the close to be seen")
    requests.get(server.url("/release?w1"), timeout=10)
    wait_for(lambda: "w1" in stats(server)["sent"], what="the app's closing message")
    assert stats(server)["sent"]["w1"] == "closed"
    assert not re.search(r'asgi: .*"GET /whole-then-waits\?w1 HTTP/1.1"', server.error_log())
    # One that left with most of it still in nginx's buffers did not have it whole.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(b"GET /whole-then-waits?w2&33554432 HTTP/1.1\r\nHost: x\r\n\r\n")
        c.recv(4096)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(lambda: stats(server)["disconnected"].get("w2") == "http.disconnect", what="the reset to be seen")
    requests.get(server.url("/release?w2"), timeout=10)
    wait_for(lambda: "w2" in stats(server)["sent"], what="the app's closing message")
    assert stats(server)["sent"]["w2"] == "ClientDisconnected"
    assert re.search(r'asgi: the connection to the client ended .*"GET /whole-then-waits\?w2&33554432 HTTP/1.1"',
                     server.error_log())


def test_trailers_true_is_ignored_and_trailers_dropped(server):
    # The server offers no http.response.trailers extension; apps that set the flag anyway (on
    # every response, as ASGIWebDAV does) are answered as uvicorn answers them.
    assert "http.response.trailers" not in requests.get(server.url("/scope")).json()["extensions"]
    r = requests.get(server.url("/trailers"), timeout=10)
    assert (r.status_code, r.content) == (200, b"with trailers")
    assert "x-checksum" not in r.headers
    assert stats(server)["disconnected"]["trailers"] == "complete"


def test_pathsend_has_nginx_send_the_file(server, tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    path.chmod(0o644)
    r = requests.get(server.url(f"/file?{path}"), timeout=10)
    assert r.content == data and r.headers["content-length"] == str(len(data))
    r = requests.get(server.url(f"/file?{path}"), headers={"Range": "bytes=10-19"}, timeout=10)
    assert (r.status_code, r.content) == (206, data[10:20]), "nginx's range filter over the file"
    r = requests.post(server.url(f"/file?{path}"), headers={"Range": "bytes=10-19"}, timeout=10)
    assert (r.status_code, r.content) == (200, data), "ranges are GET's alone (RFC 9110)"
    r = requests.head(server.url(f"/file?{path}"), timeout=10)
    assert (r.headers["content-length"], r.headers["accept-ranges"], r.content) == (str(len(data)), "bytes", b"")
    r = requests.get(server.url(f"/file?events:{path}"), timeout=10)
    assert (r.status_code, r.headers["content-type"], r.content) == (200, "text/event-stream", data), \
        "a file of events: not an event stream's early head"

    # procfs says 0 bytes and has some: sent with what it has (unless the app said 0 bytes).
    version = open("/proc/version", "rb").read()
    r = requests.get(server.url("/file?nolength:/proc/version"), timeout=10)
    assert (r.content, r.headers["content-length"]) == (version, str(len(version)))
    # sysfs says a page, whatever the file has.
    cpus = open("/sys/devices/system/cpu/online", "rb").read()
    r = requests.get(server.url("/file?nolength:/sys/devices/system/cpu/online"), timeout=10)
    assert (r.content, r.headers["content-length"]) == (cpus, str(len(cpus)))
    # A FIFO with no writer: refused at once, not waited on with the event loop held.
    os.mkfifo(tmp_path / "fifo")
    for bad in ("relative/missing", str(tmp_path / "missing"), str(tmp_path), str(tmp_path / "fifo")):
        assert requests.get(server.url(f"/file?{bad}"), timeout=10).status_code == 500
    log = server.error_log()
    assert f"{os.getcwd()}/relative/missing: No such file or directory" in log
    assert "No such file or directory" in log and "not a regular file" in log


def test_a_pathsend_file_that_shrinks_while_sent_is_named_by_its_path_in_the_log(server, tmp_path):
    path = tmp_path / "shrinking.bin"
    path.write_bytes(b"A" * (32 << 20))
    path.chmod(0o644)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(f"GET /file?{path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        got = read_until(s, b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200") and b"content-length: %d" % (32 << 20) in got.lower(), got
        os.truncate(path, 1 << 20)
        while chunk := s.recv(1 << 20):
            got += chunk
    assert len(got) < (32 << 20), "cut short, not padded"
    wait_for(lambda: f'"{path}"' in server.error_log(), what="nginx's alert naming the file")
    line = next(line for line in server.error_log().splitlines() if f'"{path}"' in line)
    assert re.search(r'(reported that|from) "%s"( was truncated|, client)' % re.escape(str(path)), line), line


def test_pathsend_of_a_relative_path_is_from_the_working_directory(nginx_factory, tmp_path):
    """Starlette's FileResponse("image.png") sends the path as given: it is opened from the
    worker's current directory, nginx's `working_directory`."""
    (tmp_path / "image.png").write_bytes(b"\x89PNG relative")
    server = nginx_factory(asgi("/", APP), main_extra=f"working_directory {tmp_path};\n",
                           http_extra="asgi_pathsend on;").start()
    r = requests.get(server.url("/file?image.png"), timeout=10)
    assert (r.status_code, r.content) == (200, b"\x89PNG relative")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def test_a_slow_client_pauses_send_and_bounds_memory(server):
    worker = server.worker_pids()[0]
    before = rss_kib(worker)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", server.port))
        s.sendall(b"GET /small/stream-until-gone?slow1 HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(s, b"xxxx")
        # The client reads nothing more: the app's send must stop within the socket buffers
        # plus wsgi_stream_buffer (64k), not run ahead.
        wait_for(lambda: stats(server)["sent"].get("slow1"), what="the app to start sending")
        last = [None]

        def paused():
            now = stats(server)["sent"]["slow1"]
            same, last[0] = now == last[0], now
            return same
        wait_for(paused, what="the app to be paused in send()")
        assert stats(server)["sent"]["slow1"] < 16 << 20
        assert rss_kib(worker) - before < 32 * 1024
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(lambda: stats(server)["disconnected"].get("slow1"), what="send() to raise")
    assert stats(server)["disconnected"]["slow1"] == "ClientDisconnected"


# --- disconnects at every stage --------------------------------------------------------------

@pytest.mark.parametrize("key,bad", BAD_CHUNKS)
def test_a_malformed_chunk_among_the_first_bytes_is_the_clients_400(server, key, bad):
    # One send: nginx's first read of the body fills its buffer (client_body_buffer_size, 8k)
    # with the good chunk, and the module's, before the app has run, meets the bad one.
    key = f"early-{key}"
    good = b"y" * 20000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST /unbuffered/upload-until-gone?{key} HTTP/1.1\r\nHost: t\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode() + b"%x\r\n%s\r\n" % (len(good), good) + bad)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 400 "), response[:200]
    assert response.count(b"HTTP/1.1 ") == 1, response[:400]
    wait_for(lambda: stats(server)["disconnected"].get(key), what="the app to see the body end")
    assert stats(server)["disconnected"][key].startswith("gone after"), stats(server)["disconnected"][key]
    assert f"the request body failed (the client's request body is malformed or incomplete, status 400): \"POST " \
           f"/unbuffered/upload-until-gone?{key} " in server.error_log()
    assert requests.post(server.url("/unbuffered/echo"), data=b"after", timeout=10).content == b"after"


def test_an_app_that_raises_after_the_client_went_says_so(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /raise-at-disconnect?rz1 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: stats(server)["receiving"].get("rz1") == "waiting", what="the app to wait")
    wait_for(lambda: "RuntimeError: rz1 raised on http.disconnect" in server.error_log(), what="the traceback")
    # The client's doing, most likely (the app's handling of its going): at info, as nginx logs it.
    line = next(l for l in server.error_log().splitlines()
                if "/raise-at-disconnect?rz1" in l and "asgi:" in l and "raised" in l)
    assert "[info]" in line and "the application raised after the client went away" in line, line
    # A body over client_max_body_size also ends in http.disconnect, but the client is there
    # (nginx answers it 413): no "went away" then.
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        send_chunks(s, b"POST /unbuffered/raise-at-disconnect?rz2 HTTP/1.1\r\nHost: t\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n", 65536, 32)
        assert read_until(s, b"\r\n").startswith(b"HTTP/1.1 413")
    wait_for(lambda: "RuntimeError: rz2 raised on http.disconnect" in server.error_log(), what="the traceback")
    line = next(l for l in server.error_log().splitlines()
                if "/raise-at-disconnect?rz2" in l and "asgi:" in l and "raised" in l)
    assert "[info]" in line and "asgi: the request body failed, and the application raised while serving" in line, line
    assert "the request body failed (the request body is larger than client_max_body_size, status 413): " \
           "\"POST /unbuffered/raise-at-disconnect?rz2 " in server.error_log()


def test_every_send_after_the_client_left_raises_client_disconnected(server):
    with socket.socket() as s:
        s.connect(("127.0.0.1", server.port))
        s.sendall(b"GET /error-page-when-gone?ep1 HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(s, b"xxxx")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(lambda: stats(server)["disconnected"].get("ep1"), what="the app's error page to fail")
    # Not "http.response.start sent a second time": the app is told what happened.
    assert stats(server)["disconnected"]["ep1"] == "ClientDisconnected"
    wait_for(lambda: "error-page-when-gone?ep1" in server.error_log(), what="the request's line")
    assert not [l for l in server.error_log().splitlines() if "error-page-when-gone?ep1" in l and "[error]" in l]


def test_a_client_that_stops_reading_times_out_as_nginx_says_it(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /impatient/stream-until-gone?st1 HTTP/1.1\r\nHost: t\r\n\r\n")
        # Never read: the send_timeout ends it, and the app's send() raises.
        wait_for(lambda: stats(server)["disconnected"].get("st1"), what="send() to raise")
    assert stats(server)["disconnected"]["st1"] == "ClientDisconnected"
    log = server.error_log()
    assert re.search(r"\[info\].*client timed out \(110: Connection timed out\).*"
                     r"GET /impatient/stream-until-gone\?st1", log), log[-3000:]
    assert re.search(r"the connection to the client ended \(closed, reset or timed out\): "
                     r"\"GET /impatient/stream-until-gone\?st1", log), log[-3000:]


def test_disconnect_while_the_app_waits_for_it(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /wait-disconnect?w1 HTTP/1.1\r\nHost: t\r\n\r\n")
        # The app has the whole (empty) body and waits in receive(); then the client goes.
        wait_for(lambda: stats(server)["receiving"].get("w1") == "waiting", what="the app to wait")
    wait_for(lambda: stats(server)["disconnected"].get("w1"), what="http.disconnect")
    assert stats(server)["disconnected"]["w1"] == "http.disconnect"


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_disconnect_during_an_unbuffered_upload(server, how):
    key = f"up-{how}"
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /unbuffered/upload-until-gone?%s HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
                  % key.encode() + b"a" * 5000)
        # The app is running and has part of the body before the client goes.
        wait_for(lambda: stats(server)["receiving"].get(key), what="the app to receive")
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(lambda: stats(server)["disconnected"].get(key), what="the app to see the disconnect")
    assert stats(server)["disconnected"][key].startswith("gone after")
    # Said as what it is, by the body's read or by the watch on the connection, whichever finds
    # it first (it was "the client's request body failed (status 400)").
    said = ("the request body failed (the client closed or reset the connection before the whole request body "
            "came): "
            f"\"POST /unbuffered/upload-until-gone?{key} ",
            f"the connection to the client ended (closed, reset or timed out): \"POST /unbuffered/upload-until-gone?{key} ")
    wait_for(lambda: any(line in server.error_log() for line in said), what="the log line")
    assert "(status 400)" not in server.error_log()


def test_disconnect_during_a_stream_raises_in_send(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /small/stream-until-gone?gone2 HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(s, b"xxxx")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(lambda: stats(server)["disconnected"].get("gone2"), what="send() to raise")
    assert stats(server)["disconnected"]["gone2"] == "ClientDisconnected"
    assert requests.get(server.url("/stream?1"), timeout=10).text == "0\n"


def test_disconnect_over_http2(server):
    client = subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", server.url("/small/stream-until-gone?h2")],
                              stdout=subprocess.PIPE)
    client.stdout.read(65536)
    client.kill()
    client.wait()
    wait_for(lambda: stats(server)["disconnected"].get("h2"), what="send() to raise on h2")


# --- misbehaving apps --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad(nginx_factory):
    return nginx_factory(asgi("/", BAD)).start()


@pytest.mark.parametrize("path,log", [
    ("/raise-before-start", "RuntimeError: boom before start"),
    ("/no-response", "returned without sending http.response.start"),
    ("/wrong-type", "unexpected ASGI message type \"http.response.bogus\""),
    ("/not-a-dict", "Traceback"),
    ("/status-str", "status must be an int, not str"),
    ("/status-100", "status 100"),
    ("/header-crlf", "contains a control character"),
    ("/header-str", "pair of bytes"),
    ("/body-before-start", "http.response.body sent before http.response.start"),
    ("/double-start", "http.response.start sent a second time"),
    ("/trailers-early", "http.response.trailers sent before the response body was complete"),
    ("/too-long", "longer than its content-length"),
    ("/sys-exit", "SystemExit: 3"),
    ("/cancelled", "CancelledError"),
    # The start had not reached nginx yet (it goes with the first body piece): still a 500.
    ("/body-str", "body must be bytes, not str"),
    # Nothing went out either: a 500, as when it raises there (uvicorn sent its head, and cuts).
    ("/start-only", "returned after http.response.start without sending http.response.body"),
])
def test_failures_before_the_body_are_500s(bad, path, log):
    worker = bad.worker_pids()
    r = requests.get(bad.url(path), timeout=10)
    assert r.status_code == 500, path
    assert log in bad.error_log()
    assert f'while serving "GET {path} HTTP/1.1"' in bad.error_log()
    assert requests.get(bad.url("/ok"), timeout=10).text == "ok"
    assert bad.worker_pids() == worker


@pytest.mark.parametrize("path,log", [
    ("/raise-after-start", "RuntimeError: boom after start"),
    ("/start-then-return", "returned before its response was complete (more_body)"),
    ("/too-short", "sent 3 bytes for a content-length of 10"),
])
def test_failures_after_the_start_cut_the_connection(bad, path, log):
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        requests.get(bad.url(path), timeout=10).content
    assert log in bad.error_log()
    assert requests.get(bad.url("/ok"), timeout=10).text == "ok"


def test_a_task_left_behind_is_told_the_server_ended_its_response(bad):
    # Not "the client closed the connection": the client was there; the app returned without
    # completing its response (uvicorn raises a RuntimeError too).
    assert requests.get(bad.url("/orphan-start"), timeout=10).status_code == 500
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        requests.get(bad.url("/orphan-body"), timeout=10).content
    wait_for(lambda: len(requests.get(bad.url("/orphans"), timeout=10).json()) == 2, what="the tasks' sends")
    assert requests.get(bad.url("/orphans"), timeout=10).json() == {
        f"/orphan-{what}": f"RuntimeError: http.response.{what} sent after the app's task ended without "
                           "completing its response (the server has ended it)" for what in ("start", "body")
    }


def test_sends_after_completion_and_ignored_bodies(bad):
    r = requests.get(bad.url("/raise-after-complete"), timeout=10)
    assert (r.status_code, r.text) == (200, "done")
    r = requests.get(bad.url("/send-after-complete"), timeout=10)
    assert (r.status_code, r.text) == (200, "done")
    session = requests.Session()
    for _ in range(3):
        r = session.post(bad.url("/never-receive"), data=b"b" * 100_000, timeout=10)
        assert r.text == "ignored", "keep-alive works with an unread body"
    log = bad.error_log()
    assert "RuntimeError: boom after complete" in log
    assert "http.response.body sent after the response was complete" in log
    assert "does not support the lifespan protocol" in log


# --- lifespan ------------------------------------------------------------------------------------

def test_startup_ran_in_every_worker_and_shutdown_at_quit(nginx_factory, tmp_path):
    server = nginx_factory(asgi("/", APP), workers=2, main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
    workers = server.worker_pids()
    wait_for(lambda: all((tmp_path / f"startup-{w}").exists() for w in workers), what="both startups")
    assert server.stop() == 0
    for w in workers:
        assert (tmp_path / f"shutdown-{w}").exists(), "lifespan.shutdown ran at exit"
        assert f"worker process {w} exited with code 0" in server.error_log()


def test_a_worker_whose_startup_fails_answers_500_loudly_and_tries_again(nginx_factory, tmp_path):
    # The check ran the startup; a worker started later (replacing a crashed or recycled one)
    # whose startup fails (a database down for a while) exited with nginx's fatal code: with
    # none left, nginx held connections that nobody answered.
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:fails_when_marked")
                           + "  location = /static { return 200 static; }\n",
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    assert requests.get(server.url("/"), timeout=10).text == "started"
    worker = server.worker_pids()[0]
    (tmp_path / "fail-startup").touch()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: "lifespan startup failed: marked to fail" in server.error_log(), what="the failed startup")
    log = server.error_log()
    assert re.search(r'\[alert\].*asgi_app ".*lifespan startup failed: marked to fail.*this worker answers 500 '
                     r'for its ASGI apps and replaces itself in 10 s to try again', log), log[-3000:]
    assert requests.get(server.url("/"), timeout=10).status_code == 500
    assert requests.get(server.url("/static"), timeout=10).text == "static"
    (tmp_path / "fail-startup").unlink()
    wait_for(lambda: requests.get(server.url("/"), timeout=10).text == "started", timeout=30,
             what="a fresh worker whose startup completes")
    assert "cannot be respawned" not in server.error_log()


def test_a_loop_that_dies_during_the_startup_is_reported_as_such(nginx_factory, tmp_path):
    # Not as a startup that timed out, after the whole wsgi_check_timeout.
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:breaks_the_loop_when_marked"),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_check_timeout 60s;").start()
    assert requests.get(server.url("/"), timeout=10).text == "started"
    worker = server.worker_pids()[0]
    (tmp_path / "break-loop").touch()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: "cannot be respawned" in server.error_log(), timeout=30,
             what="the master to give up on the worker")
    log = server.error_log()
    assert "the ASGI event loop died during the lifespan startup" in log, log[-3000:]
    assert "RuntimeError: the loop's internals are broken" in log, log[-3000:]
    assert "did not complete within" not in log, log[-3000:]


def test_a_shutdown_that_raises_is_logged_and_the_worker_exits_cleanly(nginx_factory):
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:shutdown_raises")).start()
    assert requests.get(server.url("/"), timeout=10).text == "up"
    worker = server.worker_pids()[0]
    assert server.stop() == 0
    log = server.error_log()
    assert "lifespan shutdown failed" in log and "RuntimeError: could not flush the queue" in log
    assert f"worker process {worker} exited with code 0" in log


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_signal_handler_set_in_the_startup_is_refused_with_a_warning_not_an_error(nginx_factory, loop):
    # Under uvicorn the loop is the main thread's and the call works; here the signals are
    # nginx's: the startup goes on (it had raised RuntimeError, and the app's state was missing).
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:sets_a_signal_handler"),
                           http_extra=f"asgi_event_loop {loop};").start()
    assert requests.get(server.url("/"), timeout=10).text == "connected"
    assert re.search(r"\[warn\].*an app called loop\.add_signal_handler\((Signals\.SIGTERM|15), "
                     r"sets_a_signal_handler\.<locals>\.<lambda>\): the signals belong to the server",
                     server.error_log()), server.error_log()[-3000:]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_signal_signal_in_the_startup_is_refused_with_a_warning_not_an_error(nginx_factory, loop):
    # signal.signal off the main thread raises ValueError: the workers' startups failed and
    # every request was a 500, while the check (whose loop is its main thread's) passed.
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:sets_a_signal_signal_handler"),
                           http_extra=f"asgi_event_loop {loop};").start()
    response = requests.get(server.url("/"), timeout=10)
    assert response.status_code == 200, server.error_log()[-3000:]
    assert response.text.startswith("connected, previous handler "), response.text
    worker = server.worker_pids()[0]
    assert server.stop() == 0
    log = server.error_log()
    assert len(re.findall(r"\[warn\].*an app called signal\.signal\((Signals\.SIGTERM|15), "
                          r"sets_a_signal_signal_handler\.<locals>\.<lambda>\): the signals belong "
                          r"to the server", log)) == 1, log[-3000:]
    assert log.count("an app called signal.signal(") == 1, "the handler put back is not logged"
    assert "signal only works in main thread" not in log, log[-3000:]
    assert "lifespan shutdown failed" not in log, log[-3000:]
    assert f"worker process {worker} exited with code 0" in log, log[-3000:]


def test_a_lifespan_that_raises_after_its_startup_is_logged_and_the_app_served(nginx_factory):
    # Nobody waits for the lifespan then: its traceback still reaches the log, once per worker.
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:raises_after_startup")).start()
    assert requests.get(server.url("/"), timeout=10).text == "up"
    wait_for(lambda: "RuntimeError: the cache warmer died" in server.error_log(), what="the traceback")
    worker = server.worker_pids()[0]
    assert server.stop() == 0
    log = server.error_log()
    assert re.search(r"\[error\].*raises_after_startup\".*: the lifespan coroutine raised after its "
                     r"startup completed \(its shutdown will not run\)", log), log[-3000:]
    assert f"worker process {worker} exited with code 0" in log


def test_a_startup_that_never_finishes_fails_the_check_naming_the_lifespan(nginx_factory):
    spec = f"{APPS}/asgi_lifespan.py:startup_hangs"
    # 3 s: the import before the startup takes over a second under AddressSanitizer on a busy
    # machine (the check then named the import, as it should).
    result = nginx_factory(asgi("/", spec), http_extra="wsgi_check_timeout 3s;").run("-t")
    assert result.returncode != 0
    assert f'asgi_app "{spec}"' in result.stderr, result.stderr
    assert "cannot be loaded: its lifespan startup did not finish within 3 s" in result.stderr, result.stderr


@pytest.mark.parametrize("app", ["shutdown_hangs", "shutdown_hangs_and_a_task_cleans_up"])
def test_a_shutdown_that_never_finishes_is_bounded_in_the_check_and_at_exit(nginx_factory, app):
    # The check gives the shutdown wsgi_shutdown_timeout, as the workers do, and does not fail
    # on it (wsgi_check_timeout, 60 s here, is never reached). A task that takes a moment to
    # end once cancelled after it makes the loop's end slow, not stuck.
    passes_the_check_serves_and_exits_cleanly(nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:{app}"),
                                                            http_extra="wsgi_shutdown_timeout 500ms;"))


def passes_the_check_serves_and_exits_cleanly(server):
    check = server.run("-t")
    assert check.returncode == 0, check.stderr
    server.start()
    assert requests.get(server.url("/"), timeout=10).text == "up"
    worker = server.worker_pids()[0]
    assert server.stop() == 0
    assert f"worker process {worker} exited with code 0" in server.error_log()


def test_the_checks_shutdown_has_its_own_time_beyond_the_checks(nginx_factory):
    # The startup ends within wsgi_check_timeout; the shutdown then gets wsgi_shutdown_timeout
    # of its own, though the two together run past the check's timeout.
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:slow_startup_then_shutdown_hangs"),
                           http_extra="wsgi_check_timeout 3s; wsgi_shutdown_timeout 3s;")
    check = server.run("-t")
    assert check.returncode == 0, check.stderr


def test_a_shutdown_that_ends_the_process_passes_the_check_when_it_is_the_last_apps(nginx_factory, tmp_path):
    # Chainlit's server app calls os._exit(0) in its lifespan shutdown: its import and startup
    # went well, yet the check said it "ended before it finished starting Python and importing".
    exits = f"{APPS}/asgi_lifespan.py:shutdown_exits"
    passes_the_check_serves_and_exits_cleanly(nginx_factory(asgi("/", exits)))
    # Before another app, it leaves that one unchecked.
    later = f"{APPS}/asgi_lifespan.py:returns"
    check = nginx_factory(asgi("/", exits) + asgi("/later/", later)).run("-t")
    assert check.returncode != 0
    assert (f'asgi_app "{exits}"' in check.stderr and "cannot be loaded: the check process exited with code 0 "
            "during its lifespan shutdown, after a startup that completed, before the apps after it were checked"
            in check.stderr), check.stderr
    # One that exits while it is imported is named, with the step.
    quits = tmp_path / "quits.py"
    quits.write_text("import os\nos._exit(3)\n")
    check = nginx_factory(asgi("/", f"{quits}:app")).run("-t")
    assert check.returncode != 0
    assert (f'asgi_app "{quits}:app"' in check.stderr
            and "cannot be loaded: the check process exited with code 3 while importing it" in check.stderr), check.stderr


def test_a_shutdown_that_blocks_the_loop_fails_the_check_naming_the_shutdown(nginx_factory):
    # Cancelling cannot end a blocking call: the check is killed once the shutdown's own time
    # (wsgi_shutdown_timeout, a second for cancelled tasks, a margin) is over, not after the
    # check's 60 s, and says it was the shutdown.
    spec = f"{APPS}/asgi_lifespan.py:shutdown_blocks_the_loop"
    check = nginx_factory(asgi("/", spec), http_extra="wsgi_shutdown_timeout 500ms;").run("-t")
    assert check.returncode != 0
    assert (f'asgi_app "{spec}"' in check.stderr and "cannot be loaded: its lifespan shutdown, after a "
            "startup that completed, did not end within 3.5 s" in check.stderr), check.stderr


@pytest.mark.parametrize("app, path, cut", [
    (f"{APPS}/asgi_lifespan.py:shutdown_hangs", "/",
     "lifespan shutdown did not complete within a fast stop that came during the exit (100 ms)"),
    (str(APP), "/lingers-after-response",
     "1 app task(s) still running after a fast stop that came during the exit (100 ms) are cancelled"),
])
def test_a_fast_stop_during_a_graceful_exits_asgi_waits_cuts_them_short(nginx_factory, app, path, cut):
    # Debian's and systemd's stop: QUIT, then TERM a few seconds later. The worker waited on
    # for the app's task or its lifespan shutdown (each up to wsgi_shutdown_timeout), and
    # nginx's master killed it (signal 9), the apps' atexit handlers never run.
    server = nginx_factory(asgi("/", app), http_extra="wsgi_shutdown_timeout 20s;").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url(path), timeout=10).status_code == 200
    server.send_signal(signal.SIGQUIT)
    wait_for(lambda: f"{worker}#{worker}: exiting" in server.error_log(), what="the exit")
    time.sleep(0.5)  # into the wait (which never ends by itself)
    server.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    log = server.error_log()
    assert cut in log, log[-3000:]
    assert "exited on signal" not in log, log[-3000:]
    assert f"worker process {worker} exited with code 0" in log, log[-3000:]


def test_a_fast_stop_while_the_exit_waits_on_a_blocked_loop_cuts_that_wait_short(nginx_factory):
    # A task blocks the loop's thread (a synchronous call): the exit's wait for its lifespan
    # shutdown, which the loop never takes, ran to wsgi_shutdown_timeout whatever came
    # meanwhile, and nginx's master killed the worker (signal 9).
    server = nginx_factory(asgi("/", APP), http_extra="wsgi_shutdown_timeout 6s;").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/blocks-loop?3600"), timeout=10).text == "answered"
    server.send_signal(signal.SIGQUIT)
    wait_for(lambda: "app task(s) still running after the shutdown timeout (6000 ms) are cancelled"
             in server.error_log(), what="the end of the tasks' wait")
    time.sleep(0.5)  # into the wait for the lifespan shutdown (6 s)
    server.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    log = server.error_log()
    assert "exited on signal" not in log, log[-3000:]
    assert f"worker process {worker} exited with code 1" in log, log[-3000:]
    assert re.search(r"the ASGI event loop's thread did not stop within \d+ ms of a fast stop \(a call in a coroutine "
                     r"that never returns to the loop", log), log[-3000:]
    assert "lifespan shutdown not run (1 app(s)): the event loop did not take it within a fast stop" in log, log[-3000:]


def test_a_fast_stop_while_the_loops_cancelled_tasks_end_cuts_that_wait_short(nginx_factory, tmp_path):
    # The loop's end waits for its cancelled tasks (a second at most): a fast stop that came
    # meanwhile did not shorten it, and the exit's wait for the loop, cut to the fast stop's
    # share, called the loop stuck (exit code 1, Python not finalised).
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:a_task_cleans_up_slowly"),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/"), timeout=10).text == "up"
    server.send_signal(signal.SIGQUIT)
    wait_for(lambda: (tmp_path / f"cleaning-up-{worker}").exists(), what="the task's clean-up")
    server.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    log = server.error_log()
    assert "did not stop within" not in log, log[-3000:]
    assert f"worker process {worker} exited with code 0" in log, log[-3000:]


def test_a_task_past_the_shutdown_timeout_is_cancelled_before_the_lifespan_shutdown_runs(nginx_factory, tmp_path):
    # The task gets wsgi_shutdown_timeout, then it is cancelled; the apps' lifespan shutdown
    # still runs (its own time), or their pools and flushes would be lost at every reload
    # with one long-lived task open.
    server = nginx_factory(asgi("/", APP), main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_shutdown_timeout 500ms;").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/lingers-after-response"), timeout=10).text == "answered"
    assert server.stop() == 0
    log = server.error_log()
    assert "1 app task(s) still running after the shutdown timeout (500 ms) are cancelled" in log, log[-3000:]
    assert 'the task of "GET /lingers-after-response HTTP/1.1" was still running when the worker exited' in log
    assert (tmp_path / f"shutdown-{worker}").exists(), "the lifespan shutdown ran"
    assert f"worker process {worker} exited with code 0" in log


def test_a_request_past_worker_shutdown_timeout_is_cancelled_and_the_apps_shut_down(nginx_factory, tmp_path):
    # At the exit's bound the worker ended at once, as for a WSGI thread that cannot be stopped:
    # the task was never cancelled, and the apps' lifespan shutdown and exit handlers never ran
    # (pools, flushes lost at every reload with one long poll open).
    server = nginx_factory(asgi("/", APP), main_extra=f"worker_shutdown_timeout 1s; env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    worker = server.worker_pids()[0]
    held = requests.get(server.url("/hold?never-released"), stream=True, timeout=30)
    lines = held.iter_lines()
    assert next(lines) == b"held"
    assert server.stop(sig=signal.SIGQUIT, timeout=30) == 0
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        list(lines)
    log = server.error_log()
    assert "1 ASGI request(s) still running after the shutdown timeout of 1000 ms are cancelled" in log, log[-3000:]
    assert 'the task of "GET /hold?never-released HTTP/1.1" was still running when the worker exited' in log, log[-3000:]
    assert (tmp_path / f"shutdown-{worker}").exists(), "the lifespan shutdown ran"
    assert (tmp_path / f"atexit-{worker}").exists(), "atexit handlers ran"
    assert f"worker process {worker} exited with code 0" in log, log[-3000:]
    assert "without finalizing Python" not in log and "[alert]" not in log, log[-3000:]


def test_a_stuck_wsgi_request_at_the_exit_bound_does_not_cost_the_asgi_apps_their_shutdown(nginx_factory, tmp_path):
    # A WSGI thread cannot be stopped: past worker_shutdown_timeout the worker ends without
    # finalizing Python. The ASGI apps' lifespan shutdown and the atexit handlers were skipped
    # with it; they run first now, each for a second at most.
    from conftest import METRICS, wait_inside_python
    server = nginx_factory(asgi("/", APP) + location("/w/", APPS / "sleepy.py") + METRICS,
                           main_extra=f"worker_shutdown_timeout 1s; env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    worker = server.worker_pids()[0]
    def forever():
        with pytest.raises(requests.ConnectionError):  # cut as the worker ends
            requests.get(server.url("/w/forever"), timeout=30)
    stuck = threading.Thread(target=forever, daemon=True)
    stuck.start()
    wait_inside_python(server)
    assert server.stop(sig=signal.SIGQUIT, timeout=30) == 0
    log = server.error_log()
    assert "1 request(s) still inside Python after the shutdown timeout of 1000 ms; exiting without finalizing" in log, log[-3000:]
    assert (tmp_path / f"shutdown-{worker}").exists(), "the lifespan shutdown ran"
    assert (tmp_path / f"atexit-{worker}").exists(), "atexit handlers ran"
    stuck.join(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM])
def test_an_event_loop_blocked_in_c_cannot_hold_an_exiting_worker(nginx_factory, tmp_path, sig):
    # A coroutine that blocks the loop's thread for ever (time.sleep, a synchronous driver)
    # never lets the loop stop: the worker must still end, saying where the loop was stuck,
    # with the apps' atexit handlers run.
    server = nginx_factory(asgi("/", APP), main_extra=f"worker_shutdown_timeout 1s; env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_shutdown_timeout 500ms;").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/blocks-loop?3600"), timeout=10).text == "answered"
    wait_for(lambda: (tmp_path / f"blocking-{worker}").exists(), what="the loop to block")
    started = time.monotonic()
    assert server.stop(sig=sig, timeout=30) == 0
    assert time.monotonic() - started < 10
    log = server.error_log()
    fast = " of a fast stop" if sig == signal.SIGTERM else ""
    assert re.search(rf"\[error\].*the ASGI event loop's thread did not stop within \d+ ms{fast} \(a call in a coroutine "
                     r"that never returns to the loop, or a call in C code on another thread that keeps the GIL\); "
                     r"the worker exits without finalizing Python", log), log[-3000:]
    assert "where the ASGI event loop is stuck, most recent call last:" in log, log[-3000:]
    assert 'time.sleep(float(query))' in log, log[-3000:]
    # The apps' lifespan shutdown never ran: said so, not only that the loop was stuck.
    bound = "a fast stop's share (100 ms)" if sig == signal.SIGTERM else "the shutdown timeout (500 ms)"
    assert re.search(rf"\[error\].*lifespan shutdown not run \(1 app\(s\)\): the event loop did not take it "
                     rf"within {re.escape(bound)}, a task keeping the loop's thread", log), log[-3000:]
    assert (tmp_path / f"atexit-{worker}").exists(), "atexit handlers ran"
    assert "exited on signal" not in log, log[-3000:]


@pytest.mark.parametrize("route,logged", [
    ("/stop-loop", "an application stopped the event loop (loop.stop()); it runs on"),
    ("/exit-in-callback", "an application's callback raised out of the event loop; it runs on"),
])
def test_an_app_that_stops_the_event_loop_does_not_stop_asgi_in_the_worker(nginx_factory, route, logged):
    server = nginx_factory(asgi("/", APP)).start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url(route), timeout=10).status_code == 200
    for _ in range(3):
        assert requests.get(server.url("/loop"), timeout=10).status_code == 200
    assert logged in server.error_log()
    assert server.worker_pids() == [worker]
    assert server.stop() == 0
    assert f"worker process {worker} exited with code 0" in server.error_log()


@pytest.mark.parametrize("factory", [False, True], ids=["plain-tasks", "wrapped-tasks"])
def test_a_dead_event_loop_answers_its_requests_and_the_worker_is_replaced(nginx_factory, factory):
    # An Exception out of the loop's own code ends the loop: the requests it held are answered
    # (a 500, or a cut once their head left), later ones are refused with a 503 that says when
    # to come back, and a fresh worker takes over, instead of every ASGI request of the worker
    # waiting for its timeouts for ever.
    server = nginx_factory(asgi("/", APP) + asgi("/ws/", APPS / "asgi_ws.py"),
                           http_extra="wsgi_read_timeout 120s;").start()
    worker = server.worker_pids()[0]
    if factory:
        assert requests.get(server.url("/wrap-tasks"), timeout=10).text == "wrapping"
    with websockets_connect(f"ws://127.0.0.1:{server.port}/ws/echo?dead-loop") as socket_:
        socket_.send("before")
        assert socket_.recv(timeout=10) == "before"
        held = requests.get(server.url("/hold?dead-loop"), stream=True, timeout=60)
        lines = held.iter_lines()
        assert next(lines) == b"held"
        waiting = {}
        thread = threading.Thread(target=lambda: waiting.update(
            response=requests.get(server.url("/after-release?dead-loop-2"), timeout=30)))
        thread.start()
        wait_for(lambda: requests.get(server.url("/stats"), timeout=10).json()["waiting"].get("dead-loop-2"),
                 what="the second request to wait")
        assert requests.get(server.url("/break-loop"), timeout=10).text == "broken"
        thread.join(timeout=60)
        assert waiting["response"].status_code == 500
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            list(lines)
        with pytest.raises(ConnectionClosed) as closed:
            socket_.recv(timeout=30)
        assert closed.value.rcvd.code == 1011, closed.value
    statuses = set()

    def served():
        response = requests.get(server.url("/loop"), timeout=10)
        statuses.add(response.status_code)
        if response.status_code == 503:
            assert response.headers["Retry-After"].isdigit()
        return response.status_code == 200
    wait_for(served, what="a fresh worker to serve")
    assert statuses <= {200, 503}, statuses
    assert worker not in server.worker_pids()
    log = server.error_log()
    assert "RuntimeError: the loop's internals are broken" in log, log[-3000:]
    assert re.search(r"\[error\].*the ASGI event loop died", log), log[-3000:]
    assert "this worker lost its ASGI event loop; recycling it" in log, log[-3000:]
    # Each request the loop held: one line, not an app error with a traceback of its own.
    for target in ("/hold?dead-loop", "/after-release?dead-loop-2", "/ws/echo?dead-loop"):
        assert re.search(r"\[warn\].*the ASGI event loop died with the task of \"GET "
                         + re.escape(target) + r" HTTP/1.1\" in it", log), log[-3000:]
    assert "the application raised" not in log, log[-3000:]
    assert "Task was destroyed but it is pending" not in log and "GeneratorExit" not in log, log[-3000:]
    assert server.stop() == 0


@pytest.mark.parametrize("name,logged", [
    ("raises", "RuntimeError: the database is not there"),
    ("returns", "the lifespan coroutine returned without sending lifespan.startup.complete"),
])
def test_a_startup_that_raises_or_returns_unanswered_is_logged_and_the_app_served(nginx_factory, name, logged):
    # The lifespan spec: on an exception the server must continue, without lifespan events;
    # an app that wants the server not to start sends lifespan.startup.failed.
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:{name}"))
    assert server.run("-t").returncode == 0
    server.start()
    assert requests.get(server.url("/"), timeout=10).text == "served without lifespan"
    assert server.stop() == 0
    log = server.error_log()
    assert re.search(r"\[error\].*: the lifespan startup ended without lifespan.startup.complete or .failed; "
                     r"serving the app without lifespan events", log), log
    assert logged in log and "lifespan shutdown" not in log, log


def test_apps_without_lifespan_are_served(nginx_factory):
    server = nginx_factory(asgi("/", f"{APPS}/asgi_lifespan.py:unsupported")).start()
    assert requests.get(server.url("/"), timeout=10).text == "no lifespan here"
    assert "does not support the lifespan protocol" in server.error_log()
    assert "AssertionError: only http" in server.error_log()


# --- reload and quit with requests in flight ---------------------------------------------------------

def held_request(server, fifo, results):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(f"GET /hold?fifo={fifo} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    results["first"] = read_until(s, b"held\n")

    def rest():
        results["rest"] = read_until(s, b"0\r\n\r\n", timeout=30)
        s.close()
    t = threading.Thread(target=rest)
    t.start()
    return t


def test_quit_lets_requests_in_flight_finish_then_runs_shutdown(nginx_factory, tmp_path):
    server = nginx_factory(asgi("/", APP), main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    worker = server.worker_pids()[0]
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    results = {}
    t = held_request(server, fifo, results)
    server.send_signal(signal.SIGQUIT)
    wait_for(lambda: "gracefully shutting down" in server.error_log(), what="the worker to start exiting")
    assert not (tmp_path / f"shutdown-{worker}").exists(), "shutdown waits for the request"
    with open(fifo, "wb") as f:
        f.write(b"x")
    t.join()
    assert results["rest"].endswith(b"released\n\r\n0\r\n\r\n")
    assert server.proc.wait(timeout=30) == 0
    assert (tmp_path / f"shutdown-{worker}").read_text() == "1", "after the request in flight"


def test_reload_with_a_request_in_flight(nginx_factory, tmp_path):
    server = nginx_factory(asgi("/", APP), main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    old = server.worker_pids()
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    results = {}
    t = held_request(server, fifo, results)
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: set(server.worker_pids()) - set(old), what="a new worker")
    assert requests.get(server.url("/stream?1"), timeout=10).text == "0\n", "the new worker serves"
    assert old[0] in server.worker_pids(), "the old worker waits for its request"
    with open(fifo, "wb") as f:
        f.write(b"x")
    t.join()
    assert results["rest"].endswith(b"released\n\r\n0\r\n\r\n")
    wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(),
             what="the old worker's clean exit")
    assert (tmp_path / f"shutdown-{old[0]}").read_text() == "1"


@pytest.mark.parametrize("framework,method,key", [
    ("django", "HEAD", "head-sse"),  # a HEAD's response ends with its head
    ("django", "GET", "gone-plain"),  # its client leaves while the app waits for room to send
    ("starlette", "HEAD", "head-sse"),
])
def test_an_app_that_listens_for_its_client_going_cleans_up_when_it_goes(nginx_factory, framework, method, key):
    # The send() under way raised ClientDisconnected before the listening task had heard of the
    # disconnect: the frameworks left through their error path (Django re-raised it, skipping
    # response.close() and request_finished; a stream's finally waited for the collector).
    server = nginx_factory(asgi("/", APPS / "asgi_listening.py")).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"{method} /{framework}/{key} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head = recv_until(s, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
    wanted = [f"{key} finally", f"{key} cleaned up"]
    wait_for(lambda: all(e in requests.get(server.url("/events/"), timeout=10).json() for e in wanted),
             what=f"the clean-up of {key}")
    assert "[error]" not in server.error_log(), server.error_log()[-3000:]


def test_a_task_that_stopped_listening_gets_the_disconnect_from_its_first_send(nginx_factory):
    # Its receive() waits, each cancelled by a timeout, left it counted as listening: its sends
    # after its client left returned quietly (8 of them) instead of raising.
    server = nginx_factory(asgi("/", APPS / "asgi_listening.py")).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /poller/p HTTP/1.1\r\nHost: t\r\n\r\n")
        recv_until(s, b"first")
        wait_for(lambda: "p polled" in requests.get(server.url("/events/"), timeout=10).json(), what="the polls")
    wait_for(lambda: "client prematurely closed connection" in server.error_log(), what="nginx noticing the close")
    requests.get(server.url("/release/p"), timeout=10)
    wait_for(lambda: any(e.startswith("p sent") for e in requests.get(server.url("/events/"), timeout=10).json()),
             what="the sends")
    assert "p sent 0" in requests.get(server.url("/events/"), timeout=10).json()
