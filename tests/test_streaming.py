"""Streamed responses: pieces leave as the app yields them, a slow client pauses the app instead
of filling the worker's memory, and a client that goes away stops the app."""
import http.client
import json
import signal
import socket
import subprocess
import struct
import time

import pytest
import requests

from conftest import APACHE_MODULES, APPS, assert_unanswered, location, read_until, route, wait_for

APP = APPS / "streaming.py"
NAMES = ["events", "release", "huge", "endless", "writer", "big_stream", "thread_writer"]


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory(
        [route(f"= /{n}", f"{APP}:{n}") for n in NAMES] + [route("= /stats", f"{APP}:stats_app")]
        + [route("= /rated", f"{APP}:big_stream", "limit_rate 512k;",
                 "SetOutputFilter RATE_LIMIT\n  SetEnv rate-limit 512")],
        nginx=dict(main_extra="thread_pool default threads=4;"),
        apache=dict(threads=4,
                    server_extra=f"LoadModule ratelimit_module {APACHE_MODULES}/mod_ratelimit.so\n"
                                 f"LoadModule env_module {APACHE_MODULES}/mod_env.so\n"),
    ).start()


def stats(server):
    return requests.get(server.url("/stats"), timeout=10).json()


def test_each_event_is_sent_as_soon_as_it_is_yielded(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /events?sse1 HTTP/1.1\r\nHost: t\r\n\r\n")
        first = read_until(s, b"data: first\n\n")
        assert b"HTTP/1.1 200 OK" in first and b"data: first" in first
        assert b"second" not in first
        # Only now, with the first event seen by the client, does the app get to go on.
        assert requests.get(server.url("/release?sse1")).text == "released"
        rest = read_until(s, b"0\r\n\r\n")
        assert b"data: second" in rest and rest.endswith(b"0\r\n\r\n")


def test_write_is_sent_before_the_app_returns(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /writer?w1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b"written first" in read_until(s, b"written first")
        requests.get(server.url("/release?w1"))
        assert b"then returned" in read_until(s, b"0\r\n\r\n")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("pieces", ["same", "fresh"])
def test_slow_client_pauses_the_app_and_bounds_worker_memory(server, pieces):
    worker = server.worker_pids()[0]
    before_rss = rss_kib(worker)
    before = stats(server)["yielded"]
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", server.port))
        s.sendall(f"GET /huge?{pieces} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        received = 0
        start = time.monotonic()
        while time.monotonic() - start < 5:
            received += len(s.recv(65536))
            time.sleep(1 / 16)  # about 1 MiB/s
        yielded = stats(server)["yielded"] - before
        grown = rss_kib(worker) - before_rss
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert received < 8 << 20
    assert yielded < received + (32 << 20), f"the app ran {yielded - received} bytes ahead of the client"
    assert grown < 64 * 1024, f"worker RSS grew by {grown} KiB"
    assert requests.get(server.url("/release?after-huge")).text == "released"


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("pause", ["0", "0.05"])
def test_client_gone_stops_the_app_and_frees_its_thread(server, how, pause):
    # More disconnects than the pool has threads: a thread kept by a dead stream would starve
    # the requests that follow.
    for i in range(6):
        name = f"{how}-{pause}-{i}"
        with socket.socket() as s:
            s.connect(("127.0.0.1", server.port))
            s.sendall(f"GET /endless?{name}&{pause} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert b"tick" in read_until(s, b"tick")
            if how == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        deadline = time.monotonic() + 10
        while stats(server)["closed"].get(name) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats(server)["closed"].get(name) == 1, f"close() not called once for {name}"
    assert requests.get(server.url("/release?still-serving")).text == "released"
    assert "exited on signal" not in server.error_log()


def test_write_from_an_app_thread_while_the_response_iterates_is_an_app_error(server):
    # The thread waits inside write() for a client that does not read yet; the iteration's item
    # then raises (a response has one writer at a time; it was a panic of the module's). Once
    # the client reads, the response ends between two of the thread's writes (its next one
    # raises), cut, and the worker goes on serving.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", server.port))
        s.sendall(b"GET /thread_writer?tw HTTP/1.1\r\nHost: t\r\n\r\n")
        data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
        time.sleep(1.5)
        s.settimeout(20)
        while chunk := s.recv(1 << 20):
            data += chunk
    assert not data.endswith(b"\r\n0\r\n\r\n"), "cut, not complete"
    wait_for(lambda: "tw" in stats(server)["closed"], what="the thread's write() to raise")
    assert "after the response ended" in stats(server)["closed"]["tw"]
    log = server.error_log()
    assert "iterating the response raised" in log and "a response has one writer at a time" in log, log[-3000:]
    assert "panicked" not in log and "internal error" not in log, log[-3000:]
    assert requests.get(server.url("/release?after-thread-writer"), timeout=10).text == "released"


def test_head_of_a_long_stream_on_a_keepalive_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", "/big_stream")
    r = conn.getresponse()
    assert (r.status, r.read()) == (200, b"")
    conn.request("GET", "/big_stream")
    assert conn.getresponse().read() == b"y" * (1 << 20), "the HEAD request finished; the connection goes on"


@pytest.mark.parametrize("status", ["200", "204"])
def test_a_bodiless_response_of_an_endless_stream_ends_with_its_head(server, status):
    """Nothing a HEAD's (or a 204's) iterable yields reaches the client: the head goes out with
    its first piece, the iterable is closed, and the connection's next request is served (an
    endless event stream asked for with HEAD held both its thread and its connection)."""
    name = f"head{status}"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD" if status == "200" else "GET", f"/endless?{name}&0.01&{status}")
    r = conn.getresponse()
    assert (r.status, r.read()) == (int(status), b"")
    wait_for(lambda: stats(server)["closed"].get(name) == 1, what="the iterable's close()")
    conn.request("GET", "/release?after-head")
    assert conn.getresponse().read() == b"released", "the connection goes on"


def test_stream_under_limit_rate_completes(server):
    started = time.monotonic()
    r = requests.get(server.url("/rated"), timeout=30)
    assert r.content == b"y" * (1 << 20)
    assert time.monotonic() - started > 1, "the rate limit applied"


@pytest.fixture(scope="module")
def h2_server(wsgi_factory):
    return wsgi_factory(
        [route("= /big_stream", f"{APP}:big_stream"), route("= /endless", f"{APP}:endless"),
         route("= /stats", f"{APP}:stats_app"),
         route("/unbuffered/", APPS / "input_app.py", "wsgi_request_buffering off;", "NgxWsgiRequestBuffering Off")],
        nginx=dict(server_extra="http2 on;"),
        apache=dict(server_extra=f"LoadModule http2_module {APACHE_MODULES}/mod_http2.so\nProtocols h2c http/1.1\n"),
    ).start()


def test_http2_streams_reads_unbuffered_and_notices_disconnects(h2_server):
    curl = ["curl", "-sS", "--fail", "--http2-prior-knowledge"]
    out = subprocess.run(curl + [h2_server.url("/big_stream")], capture_output=True, timeout=30, check=True)
    assert out.stdout == b"y" * (1 << 20)
    out = subprocess.run(curl + ["-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                                 h2_server.url("/unbuffered/readline")],
                         input=b"a\nb\nc", capture_output=True, timeout=30, check=True)
    assert json.loads(out.stdout)["parts"] == ["a\n", "b\n", "c"]
    client = subprocess.Popen(curl + [h2_server.url("/endless?h2-gone&0.01")], stdout=subprocess.PIPE)
    assert client.stdout.read(1), "the stream started"
    client.kill()
    client.wait()
    deadline = time.monotonic() + 10
    while stats(h2_server)["closed"].get("h2-gone") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(h2_server)["closed"].get("h2-gone") == 1


def test_event_streams_still_waiting_for_their_first_event_end_when_the_worker_exits(nginx_factory):
    # The head waits for the first event (PEP 3333), and a generator waiting on its queue has
    # none yet: at quit the stream still ends at once, with the app's head and no event, and
    # its client reconnects to the new workers instead of waiting for the old worker's end.
    server = nginx_factory(location("/", f"{APP}:quiet_events")
                           + location("/gen/", f"{APP}:quiet_events_generator"),
                           http_extra="wsgi_event_stream_grace 0;").start()
    old = server.worker_pids()
    with socket.create_connection(("127.0.0.1", server.port)) as a, \
            socket.create_connection(("127.0.0.1", server.port)) as b:
        a.sendall(b"GET /?q1&5 HTTP/1.1\r\nHost: t\r\n\r\n")
        b.sendall(b"GET /gen/?q2&5 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: "events q1: waiting" in server.error_log() and "events q2: waiting" in server.error_log(),
                 what="both apps waiting for their first event")
        server.send_signal(signal.SIGQUIT)
        for s in (a, b):
            s.settimeout(4)  # the first event is 5 s away, the worker's own end 60 s
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"text/event-stream" in got, got
            assert b"data:" not in got and got.endswith(b"\r\n\r\n0\r\n\r\n"), got
    wait_for(lambda: "events q1: closed after 0" in server.error_log()
             and "events q2: closed after 0" in server.error_log(), what="the apps' generators closed")
    assert "wsgi: 2 event stream(s) (text/event-stream) ended as the worker exits" in server.error_log()
    wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(), what="a clean exit")


def test_an_event_stream_waiting_on_a_queue_with_no_timeout_ends_its_wait_when_the_worker_exits(nginx_factory):
    # Its generator waited in queue.Queue().get() for an event that never came: the stream was
    # ended for the client, but the thread stayed there, and the old worker with it (until
    # worker_shutdown_timeout, none here: for good). ClientDisconnected is raised in the wait,
    # as write() raises it for a client gone, and the worker exits.
    server = nginx_factory(location("/", f"{APP}:queued_events"), http_extra="wsgi_event_stream_grace 0;").start()
    old = server.worker_pids()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /?qq HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: "events qq: waiting" in server.error_log(), what="the app waiting on its queue")
        server.send_signal(signal.SIGQUIT)
        s.settimeout(10)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\n0\r\n\r\n"), got
    wait_for(lambda: "events qq: ClientDisconnected" in server.error_log(), what="the wait ended in the app")
    wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(), what="a clean exit")
    log = server.error_log()
    assert "the server ended the event stream as the worker exits" in log
    assert "raised" not in log.split("events qq: ClientDisconnected", 1)[1], log[-3000:]


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGQUIT])
def test_an_event_stream_answering_a_post_runs_to_its_end_past_the_grace(nginx_factory, how):
    # An OpenAI-style completion (or an MCP reply): its client cannot ask again, so the clean
    # end the grace gives an EventSource's GET would read as the whole answer, half its tokens
    # missing. It runs on, as any response does; the GET beside it still ends at once.
    # (25 tokens, 5 s: a reload's old workers begin their exit once the new ones have started.)
    # One POST reaches its stream through an X-Accel-Redirect, which makes its method GET.
    server = nginx_factory(location("/", f"{APP}:answer") + location("/sse/", f"{APP}:ticking_events")
                           + location("/gate", f"{APPS / 'responses.py'}:accel")
                           + location("/internal/", f"{APP}:answer", "internal;"),
                           http_extra="wsgi_event_stream_grace 0;").start()
    posted = [requests.post(server.url(path), data=b"{}", stream=True, timeout=30)
              for path in ("/?25", "/gate?/internal/?25")]
    tokens = [r.iter_lines() for r in posted]
    assert [next(t) for t in tokens] == [b"data: token 0"] * 2
    listened = requests.get(server.url("/sse/?sse1&0.3"), stream=True, timeout=30)
    events = listened.iter_lines()
    assert next(events) == b"data: 0"
    server.send_signal(how)
    list(events)  # ends at once, cleanly (a cut would raise)
    for t in tokens:
        rest = [line for line in t if line]
        assert rest == [b"data: token %d" % n for n in range(1, 25)] + [b"data: [DONE]"]
    wait_for(lambda: "events sse1: closed" in server.error_log(), what="the GET's generator closed")
    # (Logged once the streams it ended are counted: after their clients may have read the end.)
    wait_for(lambda: "wsgi: 1 event stream(s) (text/event-stream) ended as the worker exits" in server.error_log(),
             what="the count of the streams ended")


def test_with_no_grace_a_reload_ends_event_streams_as_its_drain_begins(nginx_factory):
    # The drain serves the next request of each idle keep-alive connection for up to 2 s; the
    # streams it ended only at nginx's exit, after it, went on that long with no grace, while
    # their clients could already reconnect to the new workers. The idle connections close
    # first: a reconnect sent on one would reach the old worker.
    server = nginx_factory(location("/", f"{APP}:ticking_events") + 'location = /kept { return 200 "kept\\n"; }\n',
                           http_extra="wsgi_event_stream_grace 0;").start()
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    kept.sendall(b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_until(kept, b"kept\n").endswith(b"kept\n")
    listened = requests.get(server.url("/?sse-drain&0.3"), stream=True, timeout=30)
    events = listened.iter_lines()
    assert next(events) == b"data: 0"
    server.send_signal(signal.SIGHUP)
    list(events)  # ends cleanly (a cut would raise)
    assert_unanswered(kept, b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
    kept.close()
    assert "1 long-lived connection(s) (WebSockets, event streams) to send to other workers" in server.error_log()
    wait_for(lambda: "events sse-drain: closed" in server.error_log(), what="the generator closed")


@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGQUIT])
def test_event_streams_end_cleanly_when_the_worker_exits(nginx_factory, how):
    # EventSource reconnects by itself: at reload or quit the stream ends as a complete
    # response, at once (not at the app's next event, 8 s later), and the connection with it,
    # so that the reconnection goes to the new workers. The app's generator is closed at its
    # next piece, as if the client had gone. Its read timeout, due before that piece, is
    # nobody's business any more. A HEAD of a stream ended with its head; its idle keep-alive
    # connection ends with the worker.
    server = nginx_factory(location("/", f"{APP}:ticking_events")
                           + location("/timed/", f"{APP}:ticking_events", "wsgi_read_timeout 4s;"),
                           http_extra="wsgi_event_stream_grace 0;").start()
    old = server.worker_pids()
    with socket.create_connection(("127.0.0.1", server.port)) as s, \
            socket.create_connection(("127.0.0.1", server.port)) as h:
        s.sendall(b"GET /timed/?sse1&8 HTTP/1.1\r\nHost: t\r\n\r\n")
        head = read_until(s, b"data: 0\n\n")
        assert b"200 OK" in head and b"text/event-stream" in head
        h.sendall(b"HEAD /timed/?sse-head&8 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b"text/event-stream" in read_until(h, b"\r\n\r\n")
        wait_for(lambda: "events sse-head: closed after 0" in server.error_log(), what="the HEAD's generator closed")
        plain = requests.get(server.url("/?plain&0.2"), stream=True, timeout=30)
        plain_lines = plain.iter_lines()
        assert next(plain_lines) == b"data: 0"
        server.send_signal(how)
        rest = b""
        s.settimeout(10)
        while chunk := s.recv(65536):
            rest += chunk
        assert rest.endswith(b"0\r\n\r\n"), rest
        assert "events sse1: closed" not in server.error_log(), "ended while the app still waits"
        h.settimeout(10)
        assert h.recv(100) == b""
    wait_for(lambda: "events sse1: closed after 1" in server.error_log(), what="the app's generator closed")
    log = server.error_log()
    assert "wsgi: 1 event stream(s) (text/event-stream) ended as the worker exits" in log, log[-2000:]
    assert "the server ended the event stream as the worker exits" in log
    # A response that is not an event stream is in flight like any other: it goes on.
    assert next(line for line in plain_lines if line).startswith(b"data: ")
    plain.close()
    wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(), what="a clean exit")
    bad = [l for l in server.error_log().splitlines()
           if ("[error]" in l or "[alert]" in l) and "wsgi.errors: events" not in l]
    assert not bad, bad
