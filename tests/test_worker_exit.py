"""A worker's exit (quit, reload, fast stop): every request already inside Python gets its whole
answer (HTTP/2 streams too), atexit handlers run, and the exit is bounded: by
worker_shutdown_timeout, or by default 60 s past which the worker still waits while its other
connections move bytes. (Split from test_lifecycle.py, whose file alone ended the test run.)"""
import collections
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import APPS, METRICS, asgi_location, location, marks, slow_request, wait_for, wait_inside_python


def test_quit_waits_for_requests_inside_python(nginx_factory):
    server = nginx_factory(METRICS + location("/", APPS / "sleepy.py")).start()
    results = []
    t = threading.Thread(target=slow_request, args=(server, results))
    t.start()
    wait_inside_python(server)
    assert server.stop(timeout=30) == 0
    t.join()
    assert results == [(200, "/slow")]
    assert "exited on signal" not in server.error_log()


def test_reload_finishes_requests_in_flight_and_new_workers_serve(nginx_factory):
    server = nginx_factory(METRICS + location("/", APPS / "sleepy.py")).start()
    old = server.worker_pids()
    results = []
    t = threading.Thread(target=slow_request, args=(server, results))
    t.start()
    wait_inside_python(server)
    server.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (set(server.worker_pids()) - set(old)):
        time.sleep(0.05)
    assert requests.get(server.url("/fresh")).text == "/fresh"
    t.join()
    assert results == [(200, "/slow")]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and set(old) & set(server.worker_pids()):
        time.sleep(0.05)
    assert not set(old) & set(server.worker_pids()), "old worker exited after its request"
    assert "exited on signal" not in server.error_log()


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGHUP], ids=["quit", "reload"])
@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_every_multiplexed_http2_stream_is_answered_when_the_worker_exits(nginx_factory, tmp_path, kind, sig):
    # One HTTP/2 connection, 24 streams: inside the app, or (WSGI, 4 threads) queued for a
    # thread, when nginx quits or reloads. nginx sends the client a GOAWAY; every stream it had
    # taken still gets its whole answer, the queued ones included.
    n = 24
    app = f"{APPS / 'held_streams.py'}:{'application' if kind == 'wsgi' else 'app'}"
    server = nginx_factory(METRICS + (location if kind == "wsgi" else asgi_location)("/", app),
                           server_extra="http2 on;", http_extra="wsgi_max_threads 4;").start()
    old = server.worker_pids()
    flag = tmp_path / "release"
    client = subprocess.Popen(["nghttp", "-s", *(server.url(f"/?{flag}&{i}") for i in range(n))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    wait_inside_python(server, n)  # in flight counts the queued ones too
    server.send_signal(sig)
    wait_for(lambda: "gracefully shutting down" in server.error_log(), what="the worker to start exiting")
    flag.touch()
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err.decode(errors="replace")
    # nghttp writes the streams' bodies as their DATA frames come, interleaved (a frame may end
    # inside another stream's "released N"), then its statistics: one row per stream, each a
    # 200. Every byte of every body arrived: the same bytes, however they interleave.
    bodies, _, statistics = out.partition(b"***** Statistics *****")
    # (Newlines left out: nghttp adds its own before the statistics.)
    expected = collections.Counter()
    for i in range(n):
        expected.update(b"held" + b"." * 60000 + b"released %d" % i)
    assert collections.Counter(bodies.replace(b"\n", b"")) == expected, bodies[-3000:]
    rows = re.findall(rb"^\s*\d+\s+\+\S+\s+\+\S+\s+\S+\s+(\d+)\s", statistics, re.M)
    assert rows == [b"200"] * n, out[-3000:]
    if sig == signal.SIGQUIT:
        assert server.proc.wait(timeout=30) == 0
    else:
        wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(),
                 what="the old worker's clean exit")
    log = server.error_log()
    assert "[alert]" not in log and "[crit]" not in log and "exited on signal" not in log


def test_a_fast_stop_runs_the_apps_atexit_handlers_before_nginx_kills_the_worker(nginx_factory, tmp_path):
    # `nginx -s stop` (SIGTERM, as nginx.org's systemd unit stops it): nginx's master kills a
    # worker still there 1.5 s later. A request still inside Python must not keep the apps'
    # atexit handlers (a metrics flush, an error reporter's) from running before that.
    server = nginx_factory(METRICS + location("/", APPS / "lifecycle_app.py")
                           + location("/sleepy/", APPS / "sleepy.py"),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    worker = server.worker_pids()[0]

    def forever():
        try:
            requests.get(server.url("/sleepy/forever"), timeout=30)
        except requests.RequestException:
            pass
    client = threading.Thread(target=forever)
    client.start()
    wait_inside_python(server)
    assert server.stop(sig=signal.SIGTERM, timeout=30) == 0
    client.join()
    assert worker in marks(tmp_path, "finalized"), "atexit handlers ran"
    log = server.error_log()
    assert f"worker process {worker} exited with code 0" in log, log[-3000:]
    assert "[alert]" not in log and "[crit]" not in log


def test_a_request_that_never_returns_cannot_hold_an_exiting_worker(nginx_factory):
    server = nginx_factory(METRICS + location("/", APPS / "sleepy.py"),
                           main_extra="worker_shutdown_timeout 1s;").start()
    worker = server.worker_pids()[0]
    results = []
    t = threading.Thread(target=lambda: results.append(_forever(server)))
    t.start()
    wait_inside_python(server)
    started = time.monotonic()
    assert server.stop(timeout=30) == 0
    assert time.monotonic() - started < 10
    t.join()
    log = server.error_log()
    assert "wsgi: waiting for 1 request(s) inside Python before exiting" in log
    assert "still inside Python after the shutdown timeout of 1000 ms" in log
    assert f"worker process {worker} exited with code 1" in log
    assert results == ["cut"]


def test_past_the_default_exit_bound_a_worker_waits_while_its_connections_are_active(nginx_factory, tmp_path):
    # Without worker_shutdown_timeout nginx waits for every connection still sending or
    # receiving. The module's 60 s bound for requests inside Python ended the whole worker, and
    # with it a slow client's download of a static file (and uploads, proxied requests): now
    # the worker waits while such a connection is active, then cuts what is left inside Python
    # (whose own connections do not hold it).
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 << 20))  # more than the kernel's socket buffers take
    server = nginx_factory(METRICS + location("/", APPS / "sleepy.py")
                           + f"  location /files/ {{ alias {tmp_path}/; }}\n",
                           http_extra="send_timeout 120s;").start()
    worker = server.worker_pids()[0]
    results = []
    t = threading.Thread(target=lambda: results.append(_forever(server, timeout=120)))
    t.start()
    wait_inside_python(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        got = s.recv(65536)
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: "wsgi: waiting for 1 request(s) inside Python before exiting" in server.error_log(),
                 what="the old worker's exit")
        # The download, not read meanwhile, outlasts the bound.
        wait_for(lambda: "waits on while its other connections are active" in server.error_log(), timeout=90,
                 what="the default bound (60 s)")
        assert f"worker process {worker} exited" not in server.error_log()
        while chunk := s.recv(1 << 20):
            got += chunk
    body = got.split(b"\r\n\r\n", 1)[1]
    assert len(body) == big.stat().st_size and body == big.read_bytes(), len(body)
    wait_for(lambda: f"worker process {worker} exited with code 1" in server.error_log(), timeout=30,
             what="the old worker's end, its stuck request cut")
    t.join()
    assert results == ["cut"]
    assert re.search(r"1 request\(s\) still inside Python \d+ ms into the worker's exit, its other connections "
                     r"ended; exiting without finalizing Python", server.error_log())


def _forever(server, timeout=60):
    try:
        requests.get(server.url("/forever"), timeout=timeout)
        return "answered"
    except requests.ConnectionError:
        return "cut"
