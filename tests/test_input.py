"""wsgi.input over the body the server read: memory, temp file, chunked, Expect: 100-continue
(nginx), or read through the input filters as the app asks (Apache)."""
import hashlib
import json
import os
import socket

import pytest
import requests

from conftest import (APPS, BAD_CHUNKS, asgi_location, assert_broken_chunk_is_400, location, post_3000_bytes,
                      recv_until, route, send_chunks, wait_for)

APP = APPS / "input_app.py"
BODY = b"first line\nsecond\n\nlast without newline"


@pytest.fixture(scope="module")
def server(wsgi_factory):
    unbuffered = "NgxWsgiRequestBuffering Off"
    return wsgi_factory([
        route("/", APP, "client_max_body_size 100m;"),
        route("/file/", APP, "client_body_in_file_only clean;"),
        route("/small/", APP, "client_body_buffer_size 1k; client_max_body_size 100m;"),
        route("/unbuffered/", APP, "wsgi_request_buffering off; client_max_body_size 100m;", unbuffered),
        route("/unbuffered_small/", APP,
              "wsgi_request_buffering off; client_body_buffer_size 1k; wsgi_stream_buffer 4k;", unbuffered),
    ]).start()


def parts(server, way, body=BODY, prefix=""):
    r = requests.post(server.url(f"{prefix}/{way}"), data=body)
    assert r.status_code == 200, r.text
    return r.json()["parts"]


@pytest.mark.parametrize("prefix", ["", "/file", "/small"])
def test_seek_and_tell_over_a_body_at_hand(server, prefix):
    # Zope retries a request that met a conflict between transactions, reading its body again
    # from 0: without seek() every such retry was a 500. Under Apache every body is handed over
    # as the app reads it (its input filters), and cannot seek, as under mod_wsgi.
    got = parts(server, "seek", prefix=prefix)
    if server.kind == "apache":
        assert got == ["unseekable", BODY.decode()], got
        return
    n = len(BODY)
    assert got == [BODY.decode(), BODY[:5].decode(), "5", str(n - 4), BODY[-4:].decode(), str(n + 3),
                   BODY[5:].decode(), "", "negative refused"], got


def test_a_body_read_as_it_arrives_cannot_seek(server):
    # (A body too large to have come with the request's head: one that did is handed over
    # read, and seeks.)
    body = b"x" * 65536
    prefix = "/unbuffered_small" if server.kind == "nginx" else ""
    assert parts(server, "seek", body=body, prefix=prefix) == ["unseekable", body.decode()]


@pytest.mark.parametrize("prefix", ["", "/file", "/small", "/unbuffered", "/unbuffered_small"])
def test_every_read_method(server, prefix):
    text = BODY.decode()
    assert parts(server, "read", prefix=prefix) == [text]
    assert "".join(parts(server, "read_n", prefix=prefix)) == text
    assert all(len(p) == 7 for p in parts(server, "read_n", prefix=prefix)[:-1])
    assert parts(server, "readline", prefix=prefix) == ["first line\n", "second\n", "\n", "last without newline"]
    sized = parts(server, "readline_size", prefix=prefix)
    assert "".join(sized) == text and max(map(len, sized)) == 5
    assert sized[:3] == ["first", " line", "\n"]
    assert parts(server, "readlines", prefix=prefix) == ["first line\n", "second\n", "\n", "last without newline"]
    assert parts(server, "iter", prefix=prefix) == ["first line\n", "second\n", "\n", "last without newline"]


def test_reads_past_the_end_return_empty_at_once(server):
    assert parts(server, "past_end") == [BODY.decode(), "", "", ""]
    assert parts(server, "past_end", body=b"") == ["", "", "", ""]
    r = requests.get(server.url("/past_end"))
    assert r.json()["parts"] == ["", "", "", ""]
    assert r.json()["content_length"] is None


def test_chunked_body_is_dechunked_with_a_length(server):
    def gen():
        yield b"abc\n"
        yield b"def"
    r = requests.post(server.url("/readline"), data=gen())
    assert r.json() == {"parts": ["abc\n", "def"], "content_length": "7", "transfer_encoding": None}


def test_expect_100_continue_is_answered_by_the_server(server):
    body = b"x" * 5000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n"
                  b"Connection: close\r\n\r\n")
        interim = s.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        s.sendall(body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(payload)["parts"] == [body.decode()]


def test_unread_body_leaves_keepalive_working(server):
    with requests.Session() as s:
        for _ in range(3):
            r = s.post(server.url("/ignore"), data=b"y" * 100_000)
            assert r.json()["parts"] == ["ignored"]


@pytest.mark.parametrize("expect", [False, True])
def test_an_upload_the_app_refuses_unread_is_answered_before_it_is_sent(server, expect):
    # A body read as the app asks (Apache; nginx with wsgi_request_buffering off): the client
    # gets the 413 while it still has 10 MB to send, and the connection closes without reading
    # them. With Expect: 100-continue, the 413 comes alone: no 100 asked the client for a body
    # the app never read.
    prefix = "/unbuffered" if server.kind == "nginx" else ""
    expect_line = b"Expect: 100-continue\r\n" if expect else b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST " + prefix.encode() + b"/refuse HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n"
                  + expect_line + b"\r\n" + (b"" if expect else b"y" * 65536))
        data = b""
        while b"too large" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 413 "), data
    assert b"connection: close" in data.partition(b"\r\n\r\n")[0].lower(), data


@pytest.mark.parametrize("chunked", [False, True])
def test_the_100_continue_of_a_body_read_as_it_arrives_comes_with_the_apps_first_read(server, chunked):
    # The client sends nothing before its 100; the app's first read asks for it, and the body
    # then reaches the app as it arrives (the app answers its first five bytes at once).
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 10"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /unbuffered/interactive HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                  + framing + b"\r\nExpect: 100-continue\r\n\r\n")
        assert recv_until(s, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"5\r\nhello\r\n" if chunked else b"hello")
        data = recv_until(s, b"got:hello")
        assert data.startswith(b"HTTP/1.1 200 "), data
        s.sendall(b"5\r\nworld\r\n0\r\n\r\n" if chunked else b"world")
        while chunk := s.recv(65536):
            data += chunk
    assert b"rest:world" in data and b"100 Continue" not in data, data


def test_no_100_continue_follows_a_head_sent_before_the_first_read(server):
    # A final response has begun: a 100 after it would corrupt it. The client, told nothing,
    # sends its body when it tires of waiting (here at once), and the app reads it.
    prefix = b"/unbuffered" if server.kind == "nginx" else b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST " + prefix + b"/write_then_read HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                  b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        data = recv_until(s, b"head sent\n")
        assert data.startswith(b"HTTP/1.1 200 "), data
        s.sendall(b"hello")
        while chunk := s.recv(65536):
            data += chunk
    assert b"body:hello" in data and b"100 Continue" not in data, data


def test_an_answer_before_an_unbuffered_body_is_in_never_promises_a_kept_connection_it_drops(server):
    # The app answers without reading a body still arriving. nginx sends the answer at once and
    # then closes the connection (it cannot tell where the next request starts): the head says
    # so. Apache reads the rest of the body before it ends the response, and keeps the
    # connection: the next request is served on it.
    request = b"POST /unbuffered/ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
    following = b"GET /unbuffered/ignore HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        if server.kind == "nginx":
            s.sendall(request + b"y" * 10)
            data = b""
            while b"ignored" not in data:
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            head = data.partition(b"\r\n\r\n")[0].lower()
            assert b"connection: close" in head, head
            return
        s.sendall(request + b"y" * 100_000 + following)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2 and data.count(b"ignored") == 2, data


@pytest.mark.parametrize("answer", ["500", "503", "503 from error_page"])
def test_an_error_before_an_unbuffered_body_is_in_never_promises_a_kept_connection(nginx_factory, answer):
    # nginx's own error answers (the app's exception, a full queue) while the body still arrives:
    # nginx closes the connection after them, as after the app's own early answer.
    unbuffered = "wsgi_request_buffering off; client_max_body_size 1m;"
    server = nginx_factory(location("= /raises", f"{APPS}/misbehaving.py:raises", unbuffered)
                           + location("/", APPS / "sleepy.py", unbuffered)
                           + "  location = /busy { return 503 busy; }\n"
                           + "  location = /metrics { wsgi_status; }\n",
                           http_extra="wsgi_max_threads 1; wsgi_max_queue 1;"
                           + (" error_page 503 /busy;" if answer == "503 from error_page" else "")).start()
    path = "/raises" if answer == "500" else "/upload"
    if answer != "500":
        # The only thread sleeps 2 s; a second request fills the queue.
        held = []
        for gauge in ("wsgi_pool_threads_busy 1", "wsgi_requests_queued 1"):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            held[-1].sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            wait_for(lambda: gauge in requests.get(server.url("/metrics"), timeout=10).text.splitlines(),
                     what=gauge)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".encode() + b"y" * 10)
        head = recv_until(s, b"\r\n\r\n").partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 " + answer[:3].encode()), head
    assert b"connection: close" in head, head
    if answer != "500":
        for s in held:
            assert recv_until(s, b"/slow").startswith(b"HTTP/1.1 200")
            s.close()


def test_64_mib_upload_spills_to_disk_and_keeps_worker_memory_bounded(server):
    size = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256(block * 64).hexdigest()
    before = requests.get(server.url("/rss")).json()

    r = requests.post(server.url("/sha256"), data=block * 64)
    result = r.json()
    assert result["length"] == size and result["sha256"] == digest
    assert result["content_length"] == str(size)
    kib = lambda v: int(v.split()[0])  # noqa: E731
    growth = kib(result["rss"]["VmHWM"]) - kib(before["VmHWM"])
    assert growth < 32 * 1024, f"worker peak RSS grew by {growth} KiB for a 64 MiB body"


@pytest.mark.parametrize("chunked", [False, True])
def test_unbuffered_body_reaches_the_app_as_it_arrives(server, chunked):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 10"
        s.sendall(b"POST /unbuffered/interactive HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + framing + b"\r\n\r\n")
        s.sendall(b"5\r\nhello\r\n" if chunked else b"hello")
        data = b""
        while b"got:hello" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        # The app answered before the rest of the body was even sent.
        s.sendall(b"5\r\nworld\r\n0\r\n\r\n" if chunked else b"world")
        while chunk := s.recv(65536):
            data += chunk
    assert b"rest:world" in data


@pytest.mark.parametrize("key,bad", BAD_CHUNKS)
def test_a_malformed_chunk_while_the_app_reads_is_the_clients_400(server, key, bad):
    # nginx answers 400 when it buffers the body; read as it arrives, the same.
    assert_broken_chunk_is_400(server.port, f"/unbuffered/read_after_note?{key}",
                               lambda: f"read_after_note {key}: b'hello'" in server.error_log(), bad)
    assert requests.post(server.url("/unbuffered/read"), data=BODY).json()["parts"] == [BODY.decode()]
    if server.kind == "nginx":
        # The app let wsgi.input's error through: the client's fault (nginx says why, at its
        # own level), logged at info with the traceback, not as the app's error.
        line = f"the client's request body failed, and the application raised while serving \"POST /unbuffered/read_after_note?{key} "
        wait_for(lambda: line in server.error_log(), what="the module's line")
        lines = [l for l in server.error_log().splitlines()
                 if f"read_after_note?{key} " in l and "invalid chunked body" not in l]
        assert len(lines) == 1 and "[info]" in lines[0] and line in lines[0], lines


@pytest.mark.parametrize("prefix", ["", "/small", "/unbuffered", "/unbuffered_small"])
def test_threads_reading_at_once_each_get_bytes_of_their_own(server, prefix):
    # Served one at a time (a read waiting for the client holds the others back, not the GIL).
    blocks = [b"%05d" % i * 200 for i in range(700)]   # 700 KB in blocks of 1000
    r = requests.post(server.url(f"{prefix}/threads"), data=iter(b"".join(blocks[i:i + 50]) for i in range(0, 700, 50)))
    result = r.json()
    if server.kind == "apache" and prefix.startswith("/unbuffered"):
        # Apache's connection is the request thread's own: other threads are told so.
        assert len(result["errors"]) == 3 and all("own thread only under Apache" in e for e in result["errors"])
        return
    assert result["errors"] == [] and result["length"] == 700_000, result
    assert result["sorted"] == hashlib.sha256(b"".join(sorted(blocks))).hexdigest()


def test_unbuffered_64_mib_upload_uses_no_temp_file(server):
    block = os.urandom(1024 * 1024)
    before = requests.get(server.url("/unbuffered/rss")).json()
    log_before = server.error_log().count("buffered to a temporary file")
    r = requests.post(server.url("/unbuffered/sha256"), data=block * 64)
    result = r.json()
    assert result["length"] == 64 << 20
    assert result["sha256"] == hashlib.sha256(block * 64).hexdigest()
    assert server.error_log().count("buffered to a temporary file") == log_before
    kib = lambda v: int(v.split()[0])  # noqa: E731
    assert kib(result["rss"]["VmHWM"]) - kib(before["VmHWM"]) < 32 * 1024


def _post_half(server, path, total=10, sent=b"hello"):
    """POSTs `sent` of a `total`-byte body, reads the whole response, then closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {total}\r\n\r\n".encode()
                  + sent)
        return recv_until(s, b"handed off")


@pytest.mark.parametrize("when", ["during", "after"])
def test_an_app_thread_reading_a_streamed_body_past_its_request_gets_an_error(server, when):
    key = f"{when}-streamed"
    _post_half(server, f"/unbuffered/handoff?{key}")
    result = requests.get(server.url(f"/handoff_result?{key}"), timeout=30).text
    assert result.startswith(("OSError", "ValueError")), result
    assert "exited on signal" not in server.error_log()
    assert requests.post(server.url("/read"), data=BODY).json()["parts"] == [BODY.decode()]


def test_an_app_thread_reading_a_buffered_body_after_its_request_gets_an_error(server):
    r = requests.post(server.url("/handoff?after-buffered"), data=BODY)
    assert r.text == "handed off"
    result = requests.get(server.url("/handoff_result?after-buffered"), timeout=30).text
    assert result == "ValueError: wsgi.input read after the request finished", result


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_chunked_body_over_the_limit_that_keeps_coming_while_the_app_runs_on(nginx_factory, kind):
    # Unbuffered, the body fails at client_max_body_size while the app reads it; the client
    # goes on sending while the app still runs. nginx's reader is done with that body: the
    # worker must not read it again (it looped for ever, serving no one), and the client gets
    # nginx's 413.
    if kind == "wsgi":
        where = location("/", APP, "wsgi_request_buffering off; client_max_body_size 1m;")
        target = "/read_fails_then_lingers"
    else:
        where = asgi_location("/", APPS / "asgi_app.py", "wsgi_request_buffering off; client_max_body_size 1m;")
        target = "/upload-until-gone?linger"
    server = nginx_factory(where).start()
    worker = server.worker_pids()[0]
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        send_chunks(s, f"POST {target} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode(), 65524, 46)
        s.settimeout(10)
        assert recv_until(s, b"\r\n").startswith(b"HTTP/1.1 413")
    assert requests.get(server.url("/rss" if kind == "wsgi" else "/loop"), timeout=10).status_code == 200
    assert server.worker_pids() == [worker]
    assert server.error_log().count("client intended to send too large chunked body") == 1


@pytest.mark.parametrize("framing", ["length", "chunked", "broken", "h2 length", "h2 stream"])
@pytest.mark.parametrize("page", ["/refused/", "/refused_named/"])
@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_an_error_page_in_python_for_a_refused_body_gets_no_body(nginx_factory, kind, framing, page):
    # error_page 413 (client_max_body_size) pointing at the app: nginx has refused the body and
    # thrown it away, some of it perhaps read. The app saw the request's Content-Length with
    # what nginx had kept (nothing, or a piece) as if it were the whole body. It gets none, with
    # a length of 0, as behind proxy_pass.
    if kind == "wsgi":
        app, where, place = APP, "sha256", location
        named = f"wsgi_app {APP}; wsgi_param PATH_INFO /sha256;"
    else:
        app, where, place = APPS / "asgi_app.py", "scope", asgi_location
        named = f"asgi_app {app};"
    server = nginx_factory(
        place("/", app)
        + place("/refused/", app, f"client_max_body_size 1k; error_page 413 400 /{where};")
        # The location's own word on the length does not bring the refused body's back.
        + place(f"= /{where}", app, "wsgi_param HTTP_CONTENT_LENGTH $content_length;")
        + place("/refused_named/", app, f"client_max_body_size 1k; wsgi_request_buffering off; "
                                        f"error_page 413 400 = @{where};")
        + f"  location @{where} {{ {named} }}\n",
        # Only HTTP/2's framings need it: before nginx 1.25.1 an HTTP/2 listener speaks nothing else.
        server_extra="http2 on;" if framing.startswith("h2") else "").start()
    answer = post_3000_bytes(server.port, f"{page}{where}", framing)
    status = int(answer.split(b" ", 2)[1])
    assert status == (200 if page == "/refused_named/" else 400 if framing == "broken" else 413), answer
    seen = json.loads(answer[answer.index(b"{"):])
    if kind == "wsgi":
        assert (seen["length"], seen["content_length"]) == (0, "0"), seen
    else:
        framing_headers = [(n, v) for _, n, _, v in seen["headers"] if n in ("content-length", "transfer-encoding")]
        assert (seen["body"], framing_headers) == ("", [("content-length", "0")]), seen
