"""Python runs on nginx's thread pool, never on the event loop (on Apache, on the child's worker
threads): a slow request does not hold up the others on the same single worker or child."""
import re
import socket
import threading
import time

import pytest
import requests

from conftest import APPS, half_closing_clients, location, route, wait_for


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory([route("/", APPS / "sleepy.py")], nginx=dict(workers=1), apache=dict(threads=25)).start()


def test_fast_requests_finish_while_a_slow_one_sleeps(server):
    finished = []
    lock = threading.Lock()

    def get(path):
        r = requests.get(server.url(path), timeout=30)
        with lock:
            finished.append((path, r.status_code, r.text))

    slow = threading.Thread(target=get, args=("/slow",))
    slow.start()
    time.sleep(0.3)  # let the slow request reach Python first
    fast = [threading.Thread(target=get, args=(f"/fast{i}",)) for i in range(20)]
    for t in fast:
        t.start()
    for t in fast + [slow]:
        t.join()
    assert len(server.worker_pids()) == 1
    assert len(finished) == 21
    assert finished[-1] == ("/slow", 200, "/slow")
    assert sorted(finished[:20]) == sorted((f"/fast{i}", 200, f"/fast{i}") for i in range(20))


def test_named_thread_pool(nginx_factory):
    server = nginx_factory(
        location("/", APPS / "sleepy.py", "wsgi_thread_pool py;"),
        main_extra="thread_pool py threads=2;",
    ).start()
    assert requests.get(server.url("/x")).text == "/x"


def test_unknown_thread_pool_fails_config_test(nginx_factory):
    server = nginx_factory(location("/", APPS / "sleepy.py", "wsgi_thread_pool nosuch;"))
    result = server.run("-t")
    assert result.returncode != 0
    assert 'unknown thread pool "nosuch"' in result.stderr


def _h2_connection(port):
    """An HTTP/2 connection with prior knowledge (nginx's `http2 on;` on a plain listener)."""
    import h2.config
    import h2.connection

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _h2_get(sock, conn, path):
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "GET"), (":path", path), (":scheme", "http"),
                               (":authority", "test.local")], end_stream=True)
    sock.sendall(conn.data_to_send())
    return stream


_GONE = 20


@pytest.mark.parametrize("how", ["http2-reset", "http1-close", "http1-close-unbuffered"])
def test_a_request_whose_client_went_away_while_it_waited_for_a_thread_never_runs(nginx_factory, tmp_path, how):
    buffering = "wsgi_request_buffering off;" if how.endswith("unbuffered") else ""
    server = nginx_factory(
        location("/", APPS / "gate.py", f"wsgi_param WSGI_GATE_DIR {tmp_path}; {buffering}")
        + "  location = /status { wsgi_status; }\n",
        server_extra="http2 on;",
        http_extra=f"wsgi_max_threads 2; wsgi_queue_timeout 60s; wsgi_max_queue {_GONE};").start()
    ran = tmp_path / "ran"
    holders = [threading.Thread(target=requests.get, args=(server.url(f"/hold/h{i}"),), kwargs={"timeout": 60})
               for i in range(2)]
    for t in holders:
        t.start()
    wait_for(lambda: ran.exists() and len(ran.read_text().split()) == 2, what="both threads busy")
    gone = _GONE
    if how == "http2-reset":
        sock, conn = _h2_connection(server.port)
        for i in range(gone):
            conn.reset_stream(_h2_get(sock, conn, f"/run/gone{i}"), error_code=8)  # CANCEL
            sock.sendall(conn.data_to_send())
        noticed = "client canceled stream"
    else:
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(gone)]
        for i, s in enumerate(clients):
            s.sendall(f"POST /run/gone{i} HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\n\r\n".encode())
            if not buffering:
                s.sendall(b"x")
        # Closed once queued (a close that comes with the request is noticed by no one, as
        # for nginx's proxy: its event was the request's). Unbuffered, the request is handed
        # over before its body, which comes last, the close right behind it.
        wait_for(lambda: f"wsgi_requests_queued {gone}" in requests.get(server.url("/status"), timeout=10).text,
                 what="the requests queued")
        for s in clients:
            if buffering:
                s.sendall(b"x")
            s.close()
        noticed = "client prematurely closed connection"
    wait_for(lambda: server.error_log().count(noticed) >= gone, what="nginx noticing every client's going")
    # Their slots are free while the threads are still busy: a fresh request is queued, not
    # refused for a full queue.
    wait_for(lambda: "wsgi_requests_queued 0" in requests.get(server.url("/status"), timeout=10).text,
             what="the requests of clients gone out of the queue")
    fresh = []
    waiter = threading.Thread(target=lambda: fresh.append(requests.get(server.url("/run/fresh"), timeout=60)))
    waiter.start()
    (tmp_path / "release").touch()
    for t in holders + [waiter]:
        t.join()
    if how == "http2-reset":
        sock.close()
    assert fresh[0].status_code == 200 and fresh[0].text == "fresh"
    assert sorted(ran.read_text().split()) == ["fresh", "h0", "h1"], "the requests of clients gone ran"
    wait_for(lambda: "wsgi_requests_queued 0" in requests.get(server.url("/status"), timeout=10).text,
             what="the queue's gauge back to 0")
    assert "[alert]" not in server.error_log() and "[crit]" not in server.error_log()


@pytest.mark.parametrize("buffering", ["on", "off"])
def test_clients_that_close_right_behind_their_request_leave_no_alert(nginx_factory, tmp_path, buffering):
    # Their requests end as nginx notices the close: never from inside nginx's content handler,
    # which finalizes the request after its return.
    server = nginx_factory(location("/", APPS / "gate.py",
                                    f"wsgi_param WSGI_GATE_DIR {tmp_path}; wsgi_request_buffering {buffering};")).start()
    half_closing_clients(server.port, (f"POST /run/c{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx".encode()
                                       for i in range(40)))
    assert requests.get(server.url("/run/after"), timeout=10).text == "after"
    log = server.error_log()
    assert "[alert]" not in log and "count is zero" not in log, log[-3000:]


def test_a_client_that_half_closes_behind_its_request_is_taken_for_gone(nginx_factory, tmp_path):
    # As behind proxy_pass: its request is not run, or its response is dropped (499), also
    # when the close came in the same read as the request, where it leaves no event behind.
    server = nginx_factory(location("/", APPS / "gate.py", f"wsgi_param WSGI_GATE_DIR {tmp_path};")).start()
    clients = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(f"GET /hold/h{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        s.shutdown(socket.SHUT_WR)
        clients.append(s)
    (tmp_path / "release").touch()
    answered = []
    for s in clients:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        answered += [data] if data else []
    assert answered == [], answered
    assert requests.get(server.url("/run/after"), timeout=10).text == "after"
    wait_for(lambda: server.error_log().count("client prematurely closed connection") == 20,
             what="every close noticed")
    assert "[alert]" not in server.error_log()


def test_programs_the_app_starts_never_keep_a_connection_accepted_meanwhile(nginx_factory, tmp_path):
    # nginx accepts without close-on-exec and the module marks each connection right after: a
    # program started in between kept another client's connection for as long as it ran
    # (about 3 in 1,000 started while connections poured in). Starts and accepts take turns.
    server = nginx_factory(location("/spawn", APPS / "spawner.py")
                           + "  location = /ping { return 204; }\n").start()
    stop = threading.Event()

    def connect_again_and_again():
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                while s.recv(4096):
                    pass

    clients = [threading.Thread(target=connect_again_and_again) for _ in range(3)]
    for t in clients:
        t.start()
    try:
        r = requests.get(server.url(f"/spawn?1200&{tmp_path}"), timeout=300)
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert r.text == "1200"
    kept = [p.name for p in tmp_path.glob("fds-*") if "socket:" in p.read_text()]
    assert kept == [], f"{len(kept)} programs of 1200 kept a socket"


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_page_with_hundreds_of_app_includes_outlives_its_gone_client(nginx_factory, tmp_path, kind):
    # Each of the module's requests holds its main request (nginx's `blocked`, 8 bits) while
    # its app runs: 256 SSI includes at once wrapped the count to 0, and when the client left,
    # nginx's termination freed the page's pool (every include's with it) under the apps'
    # threads and tasks.
    from conftest import METRICS
    target = "/app/sleep?0.3" if kind == "wsgi" else "/app/answer?2"
    (tmp_path / "page.html").write_text(f'<!--# include virtual="{target}" -->' * 256)
    app = (location("/app/", APPS / "sleepy.py") if kind == "wsgi"
           else f"  location /app/ {{ asgi_app {APPS / 'asgi_app.py'}; }}\n")
    server = nginx_factory(f"  location = /page.html {{ ssi on; root {tmp_path}; }}\n" + app + METRICS
                           + location("/", APPS / "sleepy.py")).start()
    worker = server.worker_pids()[0]
    in_flight = lambda: int(re.search(r"^wsgi_requests_in_flight (\d+)$",  # noqa: E731
                                      requests.get(server.url("/metrics"), timeout=10).text, re.M)[1])
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /page.html HTTP/1.1\r\nHost: test.local\r\n\r\n")
        wait_for(lambda: in_flight() >= 200, what="the includes to reach their apps")
    # The includes end as their apps do, the page with the last of them.
    wait_for(lambda: in_flight() == 0 or server.worker_pids() != [worker], what="the includes' end", timeout=60)
    assert server.worker_pids() == [worker], server.error_log()[-3000:]
    assert requests.get(server.url("/fast"), timeout=10).text == "/fast"
    assert "exited on signal" not in server.error_log()
    assert server.stop() == 0
