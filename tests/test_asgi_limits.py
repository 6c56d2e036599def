"""ASGI requests under the limits WSGI ones have: `wsgi_read_timeout` (a 504 or a cut, the task
cancelled or interrupted, its stack logged), `wsgi_max_queue`/`wsgi_queue_timeout` against an
event loop that an app blocks (503 + Retry-After), the request's id on Python logging lines of
its coroutines and the tasks they spawn, and the `wsgi_status` figures."""
import asyncio
import collections
import re
import resource
import socket
import threading
import time

import pytest
import requests
from websockets.sync.client import connect

from conftest import APPS, asgi_location as asgi, half_closing_clients, status, wait_for
from test_metrics import scrape

APP = APPS / "asgi_limits.py"


@pytest.fixture(scope="module")
def server(nginx_factory):
    return nginx_factory(
        asgi("/t/", APP, "wsgi_read_timeout 500ms;")
        + asgi("/tf/", APP, "wsgi_read_timeout 500ms; client_body_in_file_only clean;")
        + asgi("/", APP, "add_header X-Request-Id $request_id;")
        + status("/metrics").for_nginx(),
    ).start()


def stats(server):
    return requests.get(server.url("/stats"), timeout=10).json()


def loop_blocked(server):
    """The blocking request runs (the loop started it) and holds the loop."""
    m = scrape(server)
    return m["wsgi_requests_in_flight"] == 1 and m["wsgi_requests_queued"] == 0


def entry(log, start):
    """The error-log entry that contains `start`, up to the next entry."""
    at = log.index(start)
    end = re.search(r"\n\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[", log[at:])
    return log[at:at + end.start()] if end else log[at:]


# --- wsgi_read_timeout ---------------------------------------------------------------------

def test_error_page_504_answers_a_timed_out_request(nginx_factory, tmp_path):
    # As for a proxied app's timeout: the request is the cancelled task's no more, and nginx's
    # 504 takes the location's `error_page` (a page, or a named location with its own status).
    (tmp_path / "busy.html").write_text("the site's own 504 page\n")
    tmp_path.chmod(0o755)
    server = nginx_factory(
        asgi("/", APP, "wsgi_read_timeout 500ms; error_page 504 /busy.html;")
        + asgi("/named/", APP, "wsgi_read_timeout 500ms; error_page 504 = @fallback;")
        + f"  location = /busy.html {{ root {tmp_path}; }}\n"
        + "  location @fallback { return 200 \"fallback\\n\"; }\n").start()
    r = requests.get(server.url("/sleep?page"), timeout=30)
    assert (r.status_code, r.text) == (504, "the site's own 504 page\n")
    r = requests.get(server.url("/named/sleep?named"), timeout=30)
    assert (r.status_code, r.text) == (200, "fallback\n")
    wait_for(lambda: {"/sleep?page", "/sleep?named"} <= set(stats(server)["cancelled"]), what="both tasks cancelled")
    assert "[alert]" not in server.error_log()


def test_deadline_answers_504_and_cancels_the_awaiting_task(server):
    before = scrape(server)
    r = requests.get(server.url("/t/sleep?a"), timeout=30)
    assert r.status_code == 504 and "Gateway Time" in r.text
    assert r.headers.get("Connection") == "close"
    wait_for(lambda: "/sleep?a" in stats(server)["cancelled"], what="CancelledError in the app")
    head = 'wsgi_read_timeout: "GET /t/sleep?a HTTP/1.1" is still running after 500 ms, request_id: '
    wait_for(lambda: head in server.error_log(), what="the timeout's entry")
    text = entry(server.error_log(), head)
    assert re.match(re.escape(head) + r"[0-9a-f]{32}; cancelling its task. Where it waits \(most recent call last\):\n", text)
    # The chain of awaits, down to asyncio's own sleep: not just the outermost coroutine.
    assert text.index("in app") < text.index("in waits_for_ever") < text.index("in sleep")
    assert "await asyncio.sleep(3600)" in text
    after = scrape(server)
    assert after["wsgi_timeouts_total"] - before["wsgi_timeouts_total"] == 1
    assert after['wsgi_responses_total{class="5xx"}'] - before['wsgi_responses_total{class="5xx"}'] == 1
    # The cancelled task raised CancelledError: that is its timeout's end, not an app failure.
    assert 'the application raised while serving "GET /t/sleep?a' not in server.error_log()


def test_a_task_that_never_awaits_is_interrupted_and_the_loop_goes_on(server):
    r = requests.get(server.url("/t/spin?b"), timeout=30)
    assert r.status_code == 504
    wait_for(lambda: "/spin?b" in stats(server)["interrupted"], what="TimeoutError in the app")
    text = entry(server.error_log(), 'wsgi_read_timeout: "GET /t/spin?b HTTP/1.1"')
    assert "it keeps the event loop busy without awaiting, so it cannot be cancelled: " \
           "interrupting it with TimeoutError. Its Python stack (most recent call last):" in text
    assert "in app\n    while True:" in text or "in app\n    n += 1" in text, text
    for i in range(5):
        assert requests.get(server.url(f"/after-spin?{i}"), timeout=10).text == f"/after-spin?{i}"
    wait_for(lambda: scrape(server)["wsgi_lost_slots"] == 0, what="the interrupted task's end")


def test_a_task_that_waits_on_a_condition_that_nobody_notifies_is_interrupted(server):
    # A synchronous Future.result() in async code with no timeout waits in a lock call that only
    # another thread's notify would end: the TimeoutError stayed pending, with the loop's thread
    # (every ASGI request of the worker) for good. The wait is ended for it, and it lands.
    r = requests.get(server.url("/t/wait-for-ever?g"), timeout=30)
    assert r.status_code == 504
    wait_for(lambda: "/wait-for-ever?g" in stats(server)["interrupted"], what="TimeoutError in the app")
    text = entry(server.error_log(), 'wsgi_read_timeout: "GET /t/wait-for-ever?g HTTP/1.1"')
    assert "interrupting it with TimeoutError" in text and "concurrent.futures.Future().result()" in text, text
    assert requests.get(server.url("/after-wait"), timeout=10).text == "/after-wait?"
    wait_for(lambda: scrape(server)["wsgi_lost_slots"] == 0, what="the interrupted task's end")


def test_a_task_the_requests_task_spawned_that_never_awaits_is_interrupted(server):
    # The request's own task awaits the spawned one, which the loop runs: that one is
    # interrupted, as it runs in a copy of the request's context.
    r = requests.get(server.url("/t/spin-in-child?e"), timeout=30)
    assert r.status_code == 504
    wait_for(lambda: "/spin-in-child?e" in stats(server)["interrupted"], what="TimeoutError in the app")
    text = entry(server.error_log(), 'wsgi_read_timeout: "GET /t/spin-in-child?e HTTP/1.1"')
    assert "it keeps the event loop busy without awaiting, so it cannot be cancelled: " \
           "interrupting it with TimeoutError" in text, text
    assert "in endpoint" in text, text
    assert requests.get(server.url("/after-child-spin"), timeout=10).text == "/after-child-spin?"
    wait_for(lambda: scrape(server)["wsgi_lost_slots"] == 0, what="the interrupted task's end")


def test_a_task_that_catches_its_timeout_and_keeps_the_loop_gets_timeout_exit(server):
    # A retry loop's `except Exception` takes the TimeoutError and spins on: 5 s later the loop's
    # thread gets TimeoutExit, a BaseException, which the loop lets through.
    r = requests.get(server.url("/t/spin-swallow?f"), timeout=60)
    assert r.status_code == 504
    head = 'wsgi_read_timeout: "GET /t/spin-swallow?f HTTP/1.1" is still running after 500 ms'
    wait_for(lambda: "interrupting it with TimeoutExit" in server.error_log(), timeout=25,
             what="the TimeoutExit entry")
    log = server.error_log()
    first = entry(log, head + ", request_id: ")
    assert "interrupting it with TimeoutError" in first, first
    later = entry(log[log.index(first) + len(first):], head)
    assert re.search(r"; it has held the event loop for 5 s since it was stopped \(the app caught what stopped "
                     r"it\): interrupting it with TimeoutExit, a BaseException that `except Exception` lets through "
                     r"\(again while it runs on\)\. Its Python stack \(most recent call last\):\n", later), later
    assert "in busy_until\n" in later, later
    s = stats(server)
    assert "/spin-swallow?f: TimeoutError" in s["swallowed"]
    assert s["exited"] == ["/spin-swallow?f"]
    for i in range(3):
        assert requests.get(server.url(f"/after-swallow?{i}"), timeout=10).text == f"/after-swallow?{i}"
    wait_for(lambda: scrape(server)["wsgi_lost_slots"] == 0, what="the interrupted task's end")
    # Its end is the timeout's, not the app's failure.
    assert 'the application raised while serving "GET /t/spin-swallow?f' not in server.error_log()


def test_a_task_that_ignores_its_cancellation_but_awaits_is_not_interrupted(server):
    # It works on after its deadline, in short pieces between awaits: the loop is not held, so
    # no TimeoutExit (it holds its own slot, and no other request's).
    r = requests.get(server.url("/t/cancel-ignored?g"), timeout=30)
    assert r.status_code == 504
    wait_for(lambda: "/cancel-ignored?g: done" in stats(server)["ran"], what="the task's end")
    head = 'wsgi_read_timeout: "GET /t/cancel-ignored?g HTTP/1.1" is still running after 500 ms'
    after = server.error_log().split(head, 1)[1]
    assert "TimeoutExit" not in after and "TimeoutError" not in after, after


def test_a_stream_past_its_deadline_is_cut_at_once(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"GET /t/stream-hang?c HTTP/1.1\r\nHost: test.local\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"first piece" in data
    assert not data.endswith(b"0\r\n\r\n"), "no clean end of the chunked body"
    wait_for(lambda: "/stream-hang?c" in stats(server)["cancelled"], what="the stream's cancellation")


def test_a_request_whose_deadline_passes_while_the_loop_is_blocked_never_runs(server):
    blocker = threading.Thread(target=lambda: requests.get(server.url("/block?3"), timeout=30))
    blocker.start()
    wait_for(lambda: loop_blocked(server), what="the loop to be blocked")
    r = requests.get(server.url("/t/late?d"), timeout=30)
    assert r.status_code == 504
    blocker.join()
    assert "/late?d" not in stats(server)["ran"]
    assert re.search(r'wsgi_read_timeout: "GET /t/late\?d HTTP/1.1" is still running after 500 ms, '
                     r"request_id: [0-9a-f]{32}; it was still waiting for the asgi event loop and will not run",
                     server.error_log())


@pytest.mark.parametrize("where, size", [("t", 1000), ("tf", 300_000)], ids=["memory", "temp-file"])
def test_a_body_read_after_the_deadline_ended_the_request_is_a_disconnect(server, where, size):
    # The app keeps the loop past its deadline, catches the interruption, then reads its body.
    # The 504 went out and the request is gone, with nginx's buffers and temp file: the read
    # says http.disconnect (it had read freed memory, or a closed or reused descriptor).
    label = f"{where}-late"
    r = requests.post(server.url(f"/{where}/read-late?{label}"), data=b"F" * size, timeout=30)
    assert r.status_code == 504
    wait_for(lambda: any(e.startswith(label) for e in stats(server)["late_read"]), what="the late read")
    assert [e for e in stats(server)["late_read"] if e.startswith(label)] == [f"{label}: http.disconnect 0"]


# --- the request id on logging lines -------------------------------------------------------

def test_logging_lines_of_a_request_and_its_spawned_tasks_carry_its_id(server):
    ids = {}

    def get(token):
        r = requests.get(server.url(f"/log?{token}"), timeout=10)
        assert r.text == "logged"
        ids[token] = r.headers["X-Request-Id"]

    threads = [threading.Thread(target=get, args=(f"tok{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids.values())) == 4
    log = server.error_log()
    for token, rid in ids.items():
        assert re.search(rf"\[warn\] .*python: limits\.app: from the handler {token}, request_id: {rid}\n", log), log
        assert re.search(rf"\[warn\] .*python: limits\.app: from a spawned task {token}, request_id: {rid}\n", log)


# --- wsgi_status ---------------------------------------------------------------------------

def test_status_counts_asgi_requests_tasks_and_websockets(server):
    before = scrape(server)
    for i in range(5):
        assert requests.get(server.url(f"/fast?{i}"), timeout=10).status_code == 200
    # A response's bytes can reach the client a moment before nginx handles the app's end,
    # where it is counted.
    counted = 'wsgi_responses_total{class="2xx"}'
    wait_for(lambda: scrape(server)[counted] - before[counted] >= 5, what="the five responses counted")
    after = scrape(server)
    assert after["wsgi_request_duration_seconds_count"] - before["wsgi_request_duration_seconds_count"] >= 5
    assert after["wsgi_requests_queued"] == 0, "requests the loop started are not queued"
    assert after["wsgi_requests_in_flight"] == 0
    # A task's end (its done callback) follows its response's.
    wait_for(lambda: scrape(server)["wsgi_asgi_tasks"] == 0, what="the tasks' ends")
    with connect(f"ws://127.0.0.1:{server.port}/ws"):
        wait_for(lambda: scrape(server)["wsgi_asgi_websockets"] == 1, what="the open WebSocket")
        during = scrape(server)
        assert during["wsgi_asgi_tasks"] == 1 and during["wsgi_requests_in_flight"] == 1
    wait_for(lambda: scrape(server)["wsgi_asgi_websockets"] == 0, what="the WebSocket's end")
    wait_for(lambda: scrape(server)["wsgi_asgi_tasks"] == 0, what="its task's end")


def test_client_gone_is_counted(server):
    before = scrape(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /until-gone?e HTTP/1.1\r\nHost: test.local\r\n\r\n")
        wait_for(lambda: "/until-gone?e" in stats(server)["ran"], what="the app to run")
    wait_for(lambda: scrape(server)["wsgi_client_gone_total"] > before["wsgi_client_gone_total"],
             what="the client's going")
    wait_for(lambda: scrape(server)["wsgi_requests_in_flight"] == 0, what="the request's end")
    wait_for(lambda: "/until-gone?e" in stats(server)["disconnected"], what="http.disconnect in the app")


# --- overload ------------------------------------------------------------------------------

def test_a_burst_the_loop_is_catching_up_with_is_served_not_refused(nginx_factory):
    # A loop that starts requests more slowly than they come (here: held 3 s, while 1,500
    # arrive) is behind, not stuck: wsgi_queue_timeout tells a stuck loop, and the ASGI queue's
    # default count (8192) leaves room for a burst, so every request is served once the loop
    # catches up. (The threads' 1024 refused the rest.)
    burst = 1500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < burst + 512:
        pytest.skip(f"the hard RLIMIT_NOFILE is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        srv = nginx_factory(asgi("/", APP) + status("/metrics").for_nginx(), worker_connections=4096,
                            listen_extra=" backlog=4096").start()
        blocker = threading.Thread(target=lambda: requests.get(srv.url("/block?3"), timeout=30))
        blocker.start()
        wait_for(lambda: loop_blocked(srv), what="the loop to be blocked")

        async def one(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(f"GET /burst?{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            return data.split(b" ", 2)[1]

        async def all_of_them():
            return await asyncio.gather(*(one(i) for i in range(burst)))

        statuses = collections.Counter(asyncio.run(all_of_them()))
        blocker.join()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert statuses == {b"200": burst}, statuses
    assert "already wait for the asgi event loop" not in srv.error_log()


@pytest.mark.parametrize("read_timeout", ["", "wsgi_read_timeout 1h;"], ids=["no-deadline", "deadline-1h"])
def test_a_loop_stuck_for_good_has_its_worker_replaced(nginx_factory, read_timeout):
    # An app's call that never returns (a lock, a socket read without a timeout, in async code)
    # holds the worker's loop for ever. Past three times wsgi_queue_timeout (5 s at least) of
    # work left untaken, the worker is recycled: the request the loop holds is cut as it exits
    # (its deadline, however far, does not hold the exit), and a fresh worker serves ASGI
    # requests again, where before every one got a 503 for ever.
    srv = nginx_factory(asgi("/", APP) + status("/metrics").for_nginx(),
                        http_extra="wsgi_queue_timeout 1s; " + read_timeout).start()
    worker = srv.worker_pids()[0]
    held = {}

    def blocker():
        try:
            held["response"] = requests.get(srv.url("/block?3600"), timeout=60)
        except requests.RequestException as e:
            held["error"] = e
    thread = threading.Thread(target=blocker)
    thread.start()
    wait_for(lambda: loop_blocked(srv), what="the loop to be blocked")
    statuses = []
    started = time.monotonic()
    # Bounded by time, not by count: once the worker gives up, the requests that reach it before
    # it stops accepting get their 503 at once.
    while time.monotonic() - started < 25:
        r = requests.get(srv.url(f"/after?{len(statuses)}"), timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
    took = time.monotonic() - started
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503}, statuses
    assert len(statuses) > 3, "three queue timeouts at least before the worker is given up"
    assert took < 20, f"the fresh worker answered {took:.1f} s after the stall began"
    thread.join(timeout=30)
    assert "error" in held, f"the held request was cut, not answered: {held}"
    assert srv.worker_pids() != [worker]
    log = srv.error_log()
    assert re.search(r"\[alert\].*wsgi: the ASGI event loop has taken none of the work handed to it for "
                     r"\d+ ms: an app keeps its thread in a call that does not return", log), log[-3000:]
    assert "this worker has a stuck ASGI event loop; recycling it" in log
    assert re.search(r"\d+ ASGI request\(s\) held by the stuck event loop are cut as the worker exits", log), log[-3000:]
    assert f"worker process {worker} exited with code 1" in log, log[-3000:]
    # The stall's stack was logged with the first refusal: the blocking call's line.
    assert re.search(r"asgi_limits\.py\", line \d+, in app\n\s+time\.sleep\(", log), log[-3000:]
    assert requests.get(srv.url("/served?again"), timeout=10).status_code == 200


def test_a_blocked_loop_gets_503s_not_an_endless_queue(nginx_factory):
    srv = nginx_factory(asgi("/", APP) + status("/metrics").for_nginx(),
                        http_extra="wsgi_max_queue 2; wsgi_queue_timeout 2s;").start()
    before = scrape(srv)
    blocker = threading.Thread(target=lambda: requests.get(srv.url("/block?6"), timeout=30))
    blocker.start()
    wait_for(lambda: loop_blocked(srv), what="the loop to be blocked")
    waiting = []
    waiters = [threading.Thread(target=lambda i=i: waiting.append(requests.get(srv.url(f"/queued?{i}"), timeout=30)))
               for i in range(2)]
    for t in waiters:
        t.start()
    wait_for(lambda: scrape(srv)["wsgi_requests_queued"] == 2, what="two requests queued")
    full = requests.get(srv.url("/full"), timeout=30)
    assert full.status_code == 503 and full.headers["Retry-After"] == "2"
    # The two queued ones are answered when their wait passes wsgi_queue_timeout: the loop is
    # still blocked, they never run.
    for t in waiters:
        t.join()
    assert [r.status_code for r in waiting] == [503, 503]
    assert all(r.headers["Retry-After"] == "2" for r in waiting)
    after = scrape(srv)
    assert after["wsgi_requests_refused_total"] - before["wsgi_requests_refused_total"] == 3
    assert after["wsgi_requests_queued"] == 0
    blocker.join()
    assert requests.get(srv.url("/served?again"), timeout=10).status_code == 200
    ran = requests.get(srv.url("/stats"), timeout=10).json()["ran"]
    assert not [p for p in ran if p.startswith("/queued") or p.startswith("/full")], ran
    log = srv.error_log()
    assert "wsgi_max_queue requests already wait for the asgi event loop to start them" in log
    # Where the app holds the loop, once for the stall: the line of the blocking call.
    assert log.count("for the ASGI event loop to start them (wsgi_queue_timeout)") == 1, log[-3000:]
    assert re.search(r"requests waited 2000 ms for the ASGI event loop to start them.*most recent call last"
                     r"[^\n]*:\n(.*\n)*.*asgi_limits\.py\", line \d+, in app\n\s+time\.sleep\(", log), log[-3000:]


def _handshake(path):
    return (f"GET {path} HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("how", ["http2-reset", "http1-close", "http1-half-close-with-request",
                                 "websocket-close", "websocket-half-close-with-request"])
def test_requests_whose_clients_left_a_blocked_loop_free_their_queue_slots(nginx_factory, how):
    # Clients that give up on a loop an app blocks: their requests (and WebSocket handshakes)
    # held wsgi_max_queue slots until the loop came back or the timeout passed, and the next
    # clients got 503 meanwhile.
    from test_concurrency import _h2_connection, _h2_get

    # Only some of the clients that close with their request have both read at once by nginx:
    # many of them, so that some do.
    gone = 40 if how.endswith("half-close-with-request") else 5
    request = _handshake if how.startswith("websocket") else (
        lambda path: f"GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n")
    srv = nginx_factory(asgi("/", APP) + status("/metrics").for_nginx(), server_extra="http2 on;",
                        http_extra=f"wsgi_max_queue {gone}; wsgi_queue_timeout 60s;").start()
    before = scrape(srv)
    blocker = threading.Thread(target=lambda: requests.get(srv.url("/block?6"), timeout=30))
    blocker.start()
    wait_for(lambda: loop_blocked(srv), what="the loop to be blocked")
    if how == "http2-reset":
        sock, conn = _h2_connection(srv.port)
        streams = [_h2_get(sock, conn, f"/gone?{i}") for i in range(gone)]
        wait_for(lambda: scrape(srv)["wsgi_requests_queued"] == gone, what="the requests queued")
        for stream in streams:
            conn.reset_stream(stream, error_code=8)  # CANCEL
        sock.sendall(conn.data_to_send())
        noticed = "client canceled stream"
    elif how in ("http1-close", "websocket-close"):
        clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(gone)]
        for i, s in enumerate(clients):
            s.sendall(request(f"/gone?{i}").encode())
        wait_for(lambda: scrape(srv)["wsgi_requests_queued"] == gone, what="the requests queued")
        for s in clients:
            s.close()
        noticed = "client prematurely closed connection"
    else:
        # The close in the same burst as the request: nginx reads both at once, and no event
        # of the connection follows.
        clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(gone)]
        for i, s in enumerate(clients):
            s.sendall(request(f"/gone?{i}").encode())
            s.shutdown(socket.SHUT_WR)
        noticed = "client prematurely closed connection"
    wait_for(lambda: srv.error_log().count(noticed) >= gone, what="nginx noticing every client's going")
    # Their slots are free while the loop is still blocked: a fresh request waits, not refused.
    wait_for(lambda: scrape(srv)["wsgi_requests_queued"] == 0, what="the requests of clients gone out of the queue")
    fresh = requests.get(srv.url("/fresh"), timeout=30)
    assert fresh.status_code == 200 and fresh.text == "/fresh?"
    blocker.join()
    if how == "http2-reset":
        sock.close()
    if how != "http2-reset":
        for s in clients:
            s.close()
    after = scrape(srv)
    assert after["wsgi_requests_refused_total"] == before["wsgi_requests_refused_total"]
    assert after["wsgi_client_gone_total"] - before["wsgi_client_gone_total"] == gone
    assert after["wsgi_asgi_websockets"] == 0
    ran = stats(srv)["ran"]
    assert not [p for p in ran if "/gone" in p], ran
    assert "[alert]" not in srv.error_log() and "[crit]" not in srv.error_log()


def test_clients_that_close_right_behind_their_request_leave_no_alert(nginx_factory):
    # A close that came with the request was noticed inside nginx's content handler, which then
    # ended (and freed) the request that nginx went on to finalize: "http request count is
    # zero" alerts, a use after free.
    srv = nginx_factory(asgi("/", APP)).start()
    half_closing_clients(srv.port, (f"GET /half-closed?{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(40)))
    assert requests.get(srv.url("/after"), timeout=10).status_code == 200
    log = srv.error_log()
    assert "[alert]" not in log and "count is zero" not in log, log[-3000:]
