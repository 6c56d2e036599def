"""Request timeouts (nginx's wsgi_read_timeout, Apache's NgxWsgiRequestTimeout): a request still
inside Python at its deadline gets a 504 at once, its Python stack goes to the error log, its
thread is interrupted and comes back; other requests are unaffected."""
import collections
import os
import pathlib
import re
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import APPS, asgi_location, location, recv_until, route, statuses_of_concurrent, tls, wait_for

DIRECTIVE = {"nginx": "wsgi_read_timeout", "apache": "NgxWsgiRequestTimeout"}


def timeout(value):
    """The route arguments that set a timeout on both servers."""
    return {"nginx": f"wsgi_read_timeout {value};", "apache": f"NgxWsgiRequestTimeout {value}"}


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory(
        [route("/", APPS / "sleepy.py", **timeout("500ms")),
         # Apache applies <Location /> under every other location: this one turns it off.
         route("/patient/", APPS / "sleepy.py", apache="NgxWsgiRequestTimeout 0"),
         route("/stream/", f"{APPS}/streaming.py:events", **timeout("500ms")),
         route("/release/", f"{APPS}/streaming.py:release", apache="NgxWsgiRequestTimeout 0")],
        nginx=dict(main_extra="thread_pool default threads=2;"),
        apache=dict(threads=2),
    ).start()


def test_deadline_answers_504_and_logs_the_stack(server):
    started = time.monotonic()
    r = requests.get(server.url("/slow"), timeout=30)
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and "Gateway Time" in r.text
    assert elapsed < 1.9, "the 504 does not wait for the app (its 2 s sleep)"
    assert r.headers.get("Connection") == "close"
    # The app's traceback is logged when time.sleep returns and the TimeoutError lands: at info,
    # as the end of the timeout logged above (an error entry read as a second failure).
    raised = ('the application raised the TimeoutError of its timeout, logged with its stack as it timed out '
              'while serving "GET /slow HTTP/1.1"')
    wait_for(lambda: raised in server.error_log(), what="the interrupted app's traceback")
    log = server.error_log()
    assert "TimeoutError" in log.split(raised, 1)[1]
    line = next(line for line in log.splitlines() if raised in line)
    assert "info]" in line and "error]" not in line, line
    assert f'{DIRECTIVE[server.kind]}: "GET /slow HTTP/1.1" is still inside Python after 500 ms' in log
    assert "time.sleep(2)" in log and "in application" in log


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_the_504s_connection_ends_with_it_not_with_the_apps_thread(server, version):
    # A client that reads to the close (an HTTP/1.0 one) has its 504 whole while the app's
    # thread still sleeps in C code (where the TimeoutError waits to land).
    line = f"GET /sleep?3.{version[-1]} HTTP/{version}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        s.sendall(f"{line}\r\nHost: test.local\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):  # socket.timeout (a failure) if the close waits for the thread
            data += chunk
    assert data.startswith(b"HTTP/1.1 504") and data.rstrip().endswith(b"</html>"), data
    # Its thread back before the next test.
    wait_for(lambda: f'the application raised the TimeoutError of its timeout, logged with its stack as it timed '
                     f'out while serving "{line}"' in server.error_log(), what="the app's end")


def test_interrupted_threads_come_back_to_the_pool(server):
    # Four spinning requests on two threads: each is interrupted, or the later ones (and
    # everything after them) would wait forever.
    assert statuses_of_concurrent(server, "/spin", 4) == [504] * 4
    assert requests.get(server.url("/patient/fast"), timeout=10).text == "/fast"
    spins = f'{DIRECTIVE[server.kind]}: "GET /spin HTTP/1.1" is still inside Python after 500 ms; '
    wait_for(lambda: server.error_log().count(spins) >= 4, what="four timeout entries")
    log = server.error_log()
    interrupted = log.count(spins + "interrupting it with TimeoutError")
    never_ran = log.count(spins + "it was still waiting for a thread or the GIL and will not run")
    # nginx: two ran and were interrupted; those that waited for a pool thread past their deadline
    # never ran. Apache: a request's deadline starts when an MPM thread takes it, so all four ran.
    assert interrupted >= 2 and interrupted + never_ran == 4, log
    if server.kind == "apache":
        assert interrupted == 4


def timed_out_and_ended(server, path, exception):
    """GETs `path`, answered 504 at its deadline, and waits for the app's end with `exception`
    (logged at info); returns the error log then."""
    assert requests.get(server.url(path), timeout=60).status_code == 504
    raised = (f"the application raised the {exception} of its timeout, logged with its stack as it timed out "
              f'while serving "GET {path} HTTP/1.1"')
    wait_for(lambda: raised in server.error_log(), timeout=25, what=f"the app's end with its {exception}")
    return server.error_log()


def test_an_app_that_catches_its_timeout_error_gets_timeout_exit(server):
    # A retry loop's `except Exception` takes the TimeoutError: 5 s later the thread gets
    # TimeoutExit, a BaseException, which such a loop lets through, and its thread comes back.
    log = timed_out_and_ended(server, "/swallow", "TimeoutExit")
    head = f'{DIRECTIVE[server.kind]}: "GET /swallow HTTP/1.1" is still inside Python after 500 ms; '
    assert head + "interrupting it with TimeoutError" in log
    assert (head + "it still runs the app's code 5 s after its TimeoutError (the app caught it): interrupting "
            "it with TimeoutExit, a BaseException that `except Exception` lets through (again while it "
            "runs on). Its Python stack (most recent call last):\n") in log
    assert log.count(head) == 2, "one entry for each interrupt"
    # Both pool threads serve: the interrupted one came back.
    assert statuses_of_concurrent(server, "/patient/fast", 2) == [200, 200]


def test_an_app_tells_the_deadlines_exceptions_apart_by_their_names_in_ngx_wsgi(server):
    # `import ngx_wsgi` (at the app's import, in nginx -t's check too) gives the classes the
    # deadline raises: `except ngx_wsgi.TimeoutError` takes the first, `except
    # ngx_wsgi.TimeoutExit` the one that follows it.
    log = timed_out_and_ended(server, "/told-apart?1.5", "TimeoutExit")
    told = re.findall(r"told apart: ([\w.]+)", log)
    assert told == ["ngx_wsgi.TimeoutError", "ngx_wsgi.TimeoutExit"], log


def test_a_timeout_error_pending_in_a_long_c_call_is_left_to_land(server):
    # time.sleep(7) runs no Python code: the TimeoutError set at 500 ms lands when it returns.
    # The look 5 s after it finds the thread where it was and leaves that one pending (a
    # TimeoutExit in its place would skip the app's `except TimeoutError` clean-up).
    log = timed_out_and_ended(server, "/sleep?7", "TimeoutError")
    head = f'{DIRECTIVE[server.kind]}: "GET /sleep?7 HTTP/1.1" is still inside Python after 500 ms; '
    assert log.count(head) == 1, "no TimeoutExit"


@pytest.mark.parametrize("kind", ["event", "queue", "future", "async-to-sync"])
def test_a_timeout_error_ends_a_wait_on_a_condition_that_nobody_notifies(server, kind):
    # Event.wait(), Queue.get(), Future.result() with no timeout, and a Django async view under
    # WSGI (asgiref's async_to_sync waits for its coroutine so) wait in a lock call that only
    # another thread's notify would end: the TimeoutError stayed pending, and the thread was
    # lost to the pool for good. The wait is ended for it, and it lands; async_to_sync's
    # coroutine, on a loop in another thread, is cancelled.
    log = timed_out_and_ended(server, f"/wait-for-ever?{kind}", "TimeoutError")
    head = f'{DIRECTIVE[server.kind]}: "GET /wait-for-ever?{kind} HTTP/1.1" is still inside Python after 500 ms; '
    assert log.count(head) == 1, "it landed at once: no TimeoutExit"
    if kind == "async-to-sync":
        wait_for(lambda: "the async view was cancelled" in server.error_log(), what="the coroutine's cancellation")
    assert statuses_of_concurrent(server, "/patient/fast", 2) == [200, 200], "both pool threads serve"


def test_a_subprocess_run_child_past_the_deadline_is_killed_so_that_its_thread_comes_back(server):
    # subprocess.run waits for its child in waitpid, which retries on its own: the TimeoutError
    # stayed pending while the child ran (an hour here). The child is killed, as run() does on
    # its own timeout, and the exception lands.
    shared = tempfile.mkdtemp(prefix="ngx-wsgi-child-")
    os.chmod(shared, 0o777)  # the Apache children run as nobody
    pid_file = pathlib.Path(shared) / "child.pid"
    timed_out_and_ended(server, f"/subprocess-run?{pid_file}", "TimeoutError")
    pid = int(pid_file.read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the child's end")
    assert statuses_of_concurrent(server, "/patient/fast", 2) == [200, 200], "both pool threads serve"


def test_a_timeout_error_that_lands_late_leaves_the_app_its_clean_up(server):
    # The TimeoutError set at 500 ms lands when the sleep returns, just before the watchdog's
    # look 5 s after setting it: the app's `except TimeoutError` clean-up still has its 5 s.
    log = timed_out_and_ended(server, "/sleep-then-clean-up?5.2", "TimeoutError")
    assert "clean-up done after 5.2 s" in log
    assert "TimeoutExit" not in log.split('"GET /sleep-then-clean-up?5.2 HTTP/1.1" is still inside Python', 1)[1]


def test_other_requests_are_unaffected(server):
    spinner = threading.Thread(target=lambda: requests.get(server.url("/spin"), timeout=30))
    spinner.start()
    time.sleep(0.1)
    for i in range(10):
        assert requests.get(server.url(f"/quick{i}"), timeout=10).text == f"/quick{i}"
    spinner.join()
    assert requests.get(server.url("/patient/slow"), timeout=10).text == "/slow"


def test_a_stream_past_its_deadline_is_cut(server):
    """After the head went out there is no 504 to send: the response ends without its last
    chunk and the connection closes at the deadline, though the app's thread is not back (its
    wait is in C code, where the TimeoutError cannot land), and nothing the app produces after
    the deadline reaches the client."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"GET /stream/?cut HTTP/1.1\r\nHost: test.local\r\n\r\n")
        data = s.recv(65536)
        entry = f'{DIRECTIVE[server.kind]}: "GET /stream/?cut HTTP/1.1" is still inside Python after 500 ms'
        wait_for(lambda: entry in server.error_log(), what="the deadline")
        s.settimeout(10)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        # Now the app goes on.
        requests.get(server.url("/release/?cut"), timeout=10)
    assert data.startswith(b"HTTP/1.1 200") and b"data: first" in data
    assert b"data: second" not in data
    assert not data.endswith(b"0\r\n\r\n"), "no clean end of the chunked body"


def test_a_stream_past_its_deadline_whose_close_would_end_it_is_reset_at_once(server):
    """HTTP/1.0: the response ends with the connection, so the cut is a reset (a close would read
    as the whole response), sent at the deadline though the app's thread is not back."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"GET /stream/?cut10 HTTP/1.0\r\nHost: test.local\r\n\r\n")
        data, reset = s.recv(65536), False
        s.settimeout(10)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            reset = True
        requests.get(server.url("/release/?cut10"), timeout=10)
    assert data.startswith(b"HTTP/1.1 200") and b"chunked" not in data.lower(), data
    assert reset and b"data: second" not in data, data


def test_an_http2_stream_past_its_deadline_is_reset_at_once(nginx_factory):
    """Over HTTP/2 the cut is a reset of the stream, sent at the deadline though the app's
    thread is not back; the connection's other streams go on."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    server = nginx_factory(location("/stream/", f"{APPS}/streaming.py:events", "wsgi_read_timeout 500ms;")
                           + location("/release/", f"{APPS}/streaming.py:release"),
                           server_extra="http2 on;").start()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    events = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        conn.initiate_connection()

        def get(stream_id, path):
            conn.send_headers(stream_id, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                          (":authority", "t")], end_stream=True)
            s.sendall(conn.data_to_send())

        def until(done):
            while not done():
                data = s.recv(65536)
                assert data, f"the connection closed: {events}"
                for event in conn.receive_data(data):
                    events.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                s.sendall(conn.data_to_send())

        def on(stream_id, kind):
            return [e for e in events if isinstance(e, kind) and e.stream_id == stream_id]

        get(1, "/stream/?h2cut")
        until(lambda: on(1, h2.events.DataReceived))
        assert b"data: first" in b"".join(e.data for e in on(1, h2.events.DataReceived))
        # The app's thread waits in C (on a lock) until /release/: the reset comes before it.
        until(lambda: on(1, h2.events.StreamReset))
        assert on(1, h2.events.StreamReset)[0].error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
        assert not on(1, h2.events.StreamEnded)
        # The reset's frame, sent, is the connection's to reuse for its own control frames.
        pings = [b"ping-%03d" % n for n in range(3)]
        for ping in pings:
            conn.ping(ping)
        s.sendall(conn.data_to_send())
        acks = lambda: [e.ping_data for e in events if isinstance(e, h2.events.PingAckReceived)]  # noqa: E731
        until(lambda: len(acks()) == len(pings))
        assert acks() == pings
        get(3, "/release/?h2cut")
        until(lambda: on(3, h2.events.StreamEnded))
        assert b"".join(e.data for e in on(3, h2.events.DataReceived)) == b"released"
    entry = 'wsgi_read_timeout: "GET /stream/?h2cut HTTP/2.0" is still inside Python after 500 ms'
    wait_for(lambda: entry in server.error_log(), what="the deadline's entry")
    assert requests.get(server.url("/release/?after"), timeout=10).text == "released"


def test_deadline_over_tls_and_http2(wsgi_factory, tmp_path_factory):
    """The 504 goes out at the deadline through TLS too; over HTTP/2 it ends its stream and the
    connection serves the next request."""
    server = wsgi_factory(
        [route("/", APPS / "sleepy.py", **timeout("500ms")),
         route("/patient/", APPS / "sleepy.py", apache="NgxWsgiRequestTimeout 0")],
        **tls(tmp_path_factory.mktemp("tls")),
    ).start()
    base = f"https://127.0.0.1:{server.port}"

    def curl(version, *urls):
        # The app sleeps 5 s in C code: a 504 that waited for it would miss curl's bound.
        out = subprocess.run(["curl", "-sk", "--max-time", "4", version, "-w", "%{http_code} %{num_connects}\\n"]
                             + [arg for url in urls for arg in ("-o", "/dev/null", url)],
                             capture_output=True, text=True, timeout=30).stdout
        return out.split()
    assert curl("--http1.1", f"{base}/sleep?5") == ["504", "1"]
    assert curl("--http2", f"{base}/sleep?5", f"{base}/patient/fast") == ["504", "1", "200", "0"], "one connection"
    # A client that reads to the close gets TLS's own end, not a bare one (a truncation).
    import ssl
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # Python sets it; OpenSSL 3 clients do not
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with context.wrap_socket(raw, suppress_ragged_eofs=False) as s:
            s.sendall(b"GET /sleep?1.5 HTTP/1.0\r\nHost: test.local\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):  # SSLEOFError on an end without close_notify
                data += chunk
    assert data.startswith(b"HTTP/1.1 504") and data.rstrip().endswith(b"</html>"), data


def test_a_burst_of_timeouts_is_not_a_burst_of_threads(wsgi_factory):
    """While one request holds the GIL in C code, 20 more time out: they are answered at once
    (no GIL needed), and the interrupts wait in one queue, not in a thread each."""
    server = wsgi_factory(
        [route("/", APPS / "sleepy.py", **timeout("500ms")),
         route("/patient/", APPS / "sleepy.py", apache="NgxWsgiRequestTimeout 0")],
        nginx=dict(main_extra="thread_pool default threads=32;"),
        apache=dict(threads=32),
    ).start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/patient/warm"), timeout=10).text == "/warm"
    def threads_of():
        """The worker's threads, less the module's own pool threads (named "wsgi"), which grow
        with the requests waiting for the GIL by design."""
        names = []
        for task in os.listdir(f"/proc/{worker}/task"):
            try:
                names.append(open(f"/proc/{worker}/task/{task}/comm").read().strip())
            except OSError:
                pass
        return sum(1 for name in names if name != "wsgi")
    before = threads_of()
    shared = tempfile.mkdtemp(prefix="ngx-wsgi-gil-")
    os.chmod(shared, 0o777)  # the Apache children run as nobody
    fifo = os.path.join(shared, "gil")
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    results = []

    def get(path):
        results.append(requests.get(server.url(path), timeout=30).status_code)
    holder = threading.Thread(target=get, args=(f"/hold-gil?{fifo}",))
    holder.start()
    try:
        wait_for(lambda: os.path.exists(fifo + ".held"), what="the app to hold the GIL")
        burst = [threading.Thread(target=get, args=("/spin",)) for _ in range(20)]
        for t in burst:
            t.start()
        for t in burst:
            t.join()
        holder.join(timeout=30)
        # Every deadline passed; every interrupt is queued, waiting for the GIL.
        during = threads_of()
    finally:
        with open(fifo, "wb") as f:
            f.write(b"x")
    holder.join()
    assert results == [504] * 21
    assert during - before <= 2, f"{during - before} threads more (the watchdog, Apache's deadline thread)"
    entries = '" is still inside Python after 500 ms; '
    wait_for(lambda: server.error_log().count(entries) == 21, what="21 timeout entries")
    log = server.error_log()
    # Those that waited for the GIL past their deadline never ran (a few may have started
    # before the app took the GIL).
    assert log.count('"GET /spin HTTP/1.1' + entries + "it was still waiting for a thread or the GIL") >= 15, log
    assert requests.get(server.url("/patient/after"), timeout=10).text == "/after"


def test_a_burst_of_timeouts_logs_a_few_stacks_a_second(nginx_factory):
    # Every request of a location stuck at once (a dependency down): each timeout is logged and
    # interrupted, but only the first few stacks of a second are formatted, which is Python
    # work under the GIL that would otherwise fall behind the timeouts and keep their threads.
    # (A second, so that the 60 threads all take the GIL and start spinning before their
    # deadline also under the sanitizer on a loaded machine: one that has not is not
    # interrupted, and its stack not formatted.)
    server = nginx_factory(location("/", APPS / "sleepy.py", "wsgi_read_timeout 1s;")).start()
    assert statuses_of_concurrent(server, "/spin", 60) == [504] * 60
    entries = '"GET /spin HTTP/1.1" is still inside Python after 1000 ms; '
    wait_for(lambda: server.error_log().count(entries) == 60, what="60 timeout entries")
    log = server.error_log()
    interrupted = log.count(entries + "interrupting it with TimeoutError. Its Python stack (most recent call last):")
    unformatted = log.count("(not formatted: more than 10 timed-out requests' stacks in this second)")
    assert 0 < unformatted < interrupted, log[-3000:]
    formatted = log.count(entries + "interrupting it with TimeoutError. Its Python stack (most recent call last):\n  File")
    assert formatted > 0 and formatted + unformatted == interrupted, log[-3000:]
    assert requests.get(server.url("/fast"), timeout=10).text == "/fast"


def test_an_interrupt_never_lands_in_the_next_request(nginx_factory):
    """Requests that end about when their deadline passes race the watchdog: whichever wins,
    the TimeoutError goes to the request that timed out or to none, never to the request its
    thread (WSGI) or the event loop (ASGI) runs next. Each slow request is followed by two
    that do nothing and must all succeed."""
    server = nginx_factory(
        location("/w/", f"{APPS}/near_deadline.py", "wsgi_read_timeout 100ms;")
        + asgi_location("/a/", f"{APPS}/near_deadline.py:app", "wsgi_read_timeout 100ms;"),
        main_extra="thread_pool default threads=1;").start()
    for prefix in ("/w", "/a"):
        slow, fast = collections.Counter(), collections.Counter()
        for _ in range(60):
            try:
                slow[requests.get(server.url(f"{prefix}/slow"), timeout=30).status_code] += 1
            except requests.exceptions.ChunkedEncodingError:
                slow["cut"] += 1  # the deadline came after the head had gone out
            for _ in range(2):
                fast[requests.get(server.url(f"{prefix}/fast"), timeout=30).status_code] += 1
        # An interrupt landing in a fast request within its own deadline makes it raise
        # TimeoutError: a 500. (A fast request that waited past its own deadline, on a loaded
        # machine, is its own 504, not the race this looks for.)
        assert set(fast) <= {200, 504} and fast[200] > 0, (prefix, fast, slow, server.error_log()[-3000:])
        assert set(slow) <= {200, 504, "cut"}, (prefix, slow)


def test_a_stream_cut_at_its_deadline_while_it_waits_for_its_client_runs_its_close_to_the_end(nginx_factory, tmp_path):
    """The thread waits in the server (its client reads nothing) when the deadline passes: no
    TimeoutError may land in the iterable's close(), the app's clean-up."""
    mark = tmp_path / "closed"
    server = nginx_factory(location("/", APPS / "close_cleans_up.py",
                                    f"wsgi_read_timeout 1s; wsgi_stream_buffer 64k; wsgi_param WSGI_MARK {mark};")).start()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n")
        wait_for(lambda: mark.exists() and mark.read_text() == "closed", what="close() to run to its end")
    log = server.error_log()
    assert "wsgi_read_timeout" in log
    assert "close() raised" not in log, log


def test_the_access_log_has_a_timed_out_or_abandoned_request_when_it_ends_not_when_its_thread_does(
        nginx_factory, tmp_path):
    # As nginx logs a proxied request at its timeout (504) or when its client goes (499): the
    # entry is there while the app's thread still holds the request, and only once.
    tmp_path.chmod(0o777)
    log = tmp_path / "access.log"
    server = nginx_factory(
        location("/timed/", APPS / "stubborn.py", f"wsgi_read_timeout 300ms; wsgi_param WSGI_GATE_DIR {tmp_path};")
        + location("/", APPS / "stubborn.py", f"wsgi_param WSGI_GATE_DIR {tmp_path};"),
        http_extra="log_format ended '$status $request_uri';",
        server_extra=f"access_log {log} ended;").start()
    # The client keeps its connection (as an HTTP/2 one would): the entry comes with the 504.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /timed/a HTTP/1.1\r\nHost: t\r\n\r\n")
        head = recv_until(s, b"</html>\r\n")
        assert head.startswith(b"HTTP/1.1 504"), head
        wait_for(lambda: log.exists() and "504 /timed/a\n" in log.read_text(), what="the 504's entry")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: (tmp_path / "entered-gone").exists(), what="the request inside Python")
    wait_for(lambda: "499 /gone\n" in log.read_text(), what="the abandoned request's entry")
    (tmp_path / "release").touch()
    assert requests.get(server.url("/after"), timeout=10).text == "late"
    wait_for(lambda: "200 /after\n" in log.read_text(), what="the next request's entry")
    assert log.read_text().splitlines() == ["504 /timed/a", "499 /gone", "200 /after"], log.read_text()


def test_error_page_504_answers_at_the_deadline(nginx_factory, tmp_path):
    # As for a proxied app's timeout, the location's `error_page 504` answers (a page, or a
    # named location's app with its own status) at the deadline, also while the thread is still
    # busy (a call stuck in C code; here a loop that takes its TimeoutError and waits to be
    # released): the request is freed when the thread is back.
    tmp_path.chmod(0o777)
    (tmp_path / "busy.html").write_text("the site's own 504 page\n")
    log = tmp_path / "access.log"
    server = nginx_factory(
        location("/", APPS / "sleepy.py", "wsgi_read_timeout 500ms; error_page 504 /busy.html;")
        + location("/named/", APPS / "sleepy.py", "wsgi_read_timeout 500ms; error_page 504 = @fallback;")
        + location("/stuck/", APPS / "stubborn.py",
                   f"wsgi_read_timeout 300ms; error_page 504 /busy.html; wsgi_param WSGI_GATE_DIR {tmp_path};")
        + location("/stuck-later/", APPS / "stubborn.py",
                   f"wsgi_read_timeout 1s; error_page 504 /busy.html; wsgi_param WSGI_GATE_DIR {tmp_path};")
        + f"  location = /busy.html {{ root {tmp_path}; }}\n"
        + location("@fallback", APPS / "sleepy.py", "wsgi_param PATH_INFO /fallback;"),
        http_extra="log_format ended '$status $request_uri';",
        server_extra=f"access_log {log} ended;").start()

    def entries():
        return log.read_text().splitlines() if log.exists() else []
    r = requests.get(server.url("/spin"), timeout=30)
    assert (r.status_code, r.text) == (504, "the site's own 504 page\n")
    assert r.headers.get("Connection") == "close"
    wait_for(lambda: entries() == ["504 /spin"], what="its entry")
    r = requests.get(server.url("/named/spin"), timeout=30)
    assert (r.status_code, r.text) == (200, "/fallback")
    wait_for(lambda: entries()[1:] == ["200 /named/spin"], what="its entry")
    # The page, and its entry, while the thread is still held.
    r = requests.get(server.url("/stuck/a"), timeout=30)
    assert (r.status_code, r.text) == (504, "the site's own 504 page\n")
    wait_for(lambda: entries()[2:] == ["504 /stuck/a"], what="its entry")
    assert not (tmp_path / "release").exists() and (tmp_path / "entered-a").exists()
    assert requests.get(server.url("/fast"), timeout=10).text == "/fast"
    # A client that reads to the close has the page's end at once.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /stuck/c HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):  # socket.timeout (a failure) if the close waits for the thread
            data += chunk
    assert data.startswith(b"HTTP/1.1 504") and data.endswith(b"the site's own 504 page\n"), data
    # A client gone before its deadline: ended as its client left, when the thread is back.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /stuck-later/gone HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: (tmp_path / "entered-gone").exists(), what="the request inside Python")
    wait_for(lambda: "499 /stuck-later/gone" in entries(), what="its entry")
    wait_for(lambda: '"GET /stuck-later/gone HTTP/1.1" is still inside Python' in server.error_log(),
             what="its deadline")
    (tmp_path / "release").touch()
    assert requests.get(server.url("/stuck/b"), timeout=10).text == "late"
    wait_for(lambda: entries()[-1:] == ["200 /stuck/b"], what="the last entry")
    assert entries() == ["504 /spin", "200 /named/spin", "504 /stuck/a", "200 /fast", "504 /stuck/c",
                         "499 /stuck-later/gone", "200 /stuck/b"]
    # Every connection was closed (nginx names one left open as the worker exits).
    assert server.stop() == 0
    error_log = server.error_log()
    assert 'wsgi_read_timeout: "GET /spin HTTP/1.1" is still inside Python after 500 ms' in error_log
    assert "[alert]" not in error_log and "[crit]" not in error_log, error_log
