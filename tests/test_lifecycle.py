"""One interpreter per worker: the app is imported at worker start, and worker exit finalises
Python cleanly even when the app started threads."""
import http.client
import os
import pathlib
import re
import subprocess
import signal
import socket
import sys
import tempfile
import threading
import time

import httpx
import pytest
import requests

from conftest import APPS, asgi_location, location, marks, route, slow_request, wait_for


def test_app_imported_at_worker_start_and_finalized_at_exit(nginx_factory, tmp_path):
    server = nginx_factory(location("/", APPS / "lifecycle_app.py"), workers=2,
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra=f"proxy_cache_path {tmp_path}/cache keys_zone=c:1m;").start()
    deadline = time.monotonic() + 10
    while len(server.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = server.worker_pids()
    while len(marks(tmp_path, "imported")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Imported by each worker before any request; never by the master or the cache processes.
    while len(server.children()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    cache_processes = {pid for pid, title in server.children() if "cache" in title}
    assert len(cache_processes) == 2, server.children()
    time.sleep(0.3)
    imported = set(marks(tmp_path, "imported"))
    assert set(workers) <= imported
    assert not cache_processes & imported
    assert server.proc.pid not in imported
    served_by = {int(requests.get(server.url("/")).text) for _ in range(20)}
    assert served_by <= set(workers)

    assert server.stop() == 0
    assert set(marks(tmp_path, "finalized")) >= set(workers), "atexit handlers ran: Python was finalised"
    log = server.error_log()
    assert "exited on signal" not in log and "core dumped" not in log
    for pid in workers:
        assert f"worker process {pid} exited with code 0" in log


@pytest.mark.parametrize("workers,handover", [(1, True), (2, True), (1, False)],
                         ids=["handover", "handover-2-workers", "default"])
def test_a_reload_pauses_for_the_new_workers_import_only_without_the_handover(nginx_factory, tmp_path, workers,
                                                                            handover):
    # nginx's old workers stop accepting as soon as a reload has forked the new ones, which
    # import the apps before they accept: by default new connections wait for that (a Gradio
    # app's import: 3.7 s) and get the new configuration. With wsgi_reload_handover on, the old
    # workers go on accepting until the new ones are all ready.
    tmp_path.chmod(0o777)
    server = nginx_factory(location("/", APPS / "slow_import.py"), workers=workers,
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_reload_handover on;" if handover else "").start()
    wait_for(lambda: len(server.worker_pids()) == workers, what="the workers")
    old = server.worker_pids()

    def served_by(timeout=1.5):
        return int(requests.get(server.url("/"), timeout=timeout).text.split()[-1])
    wait_for(lambda: len(marks(tmp_path, "importing")) >= workers + 1, what="the first workers' imports")
    time.sleep(3.5)
    assert served_by() in old
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: [p for p in marks(tmp_path, "importing") if p not in old and p in server.worker_pids()],
             what="a new worker importing the app")
    time.sleep(0.5)  # the master tells the old workers to quit 100 ms after it forked the new ones
    if handover:
        # The new workers' import takes 3 s: a connection that waited for it would not be
        # answered in 1.5 s.
        for _ in range(4):
            assert served_by() in old
    else:
        assert served_by(timeout=10) not in old
    wait_for(lambda: not set(old) & set(server.worker_pids()), 30, "the old workers' exit")
    new = server.worker_pids()
    assert served_by() in new
    log = server.error_log()
    assert log.count("this worker goes on accepting until they are ready") == (workers if handover else 0), \
        log[-3000:]
    assert len(re.findall(r"the reload's new workers are ready after \d+ ms; this worker quits", log)) == \
        (workers if handover else 0)
    for pid in old:
        wait_for(lambda: f"worker process {pid} exited with code 0" in server.error_log(), what="a clean exit")
    # A quit with no reload is taken at once.
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10


def test_reloads_under_load_lose_no_request(nginx_factory):
    server = nginx_factory(location("/", APPS / "sleepy.py"), workers=2).start()
    wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d6s", "--timeout", "20s", "-H", "Connection: close",
                            server.url("/fast")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    slow = []
    threads = [threading.Thread(target=slow_request, args=(server, slow)) for _ in range(3)]
    time.sleep(1)
    for t in threads:
        t.start()
    for _ in range(3):
        time.sleep(0.3)
        server.send_signal(signal.SIGHUP)
        time.sleep(1)
    out, _ = wrk.communicate(timeout=60)
    for t in threads:
        t.join()
    assert slow == [(200, "/slow")] * 3
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    assert requests_done > 100, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    assert "exited on signal" not in server.error_log()


@pytest.mark.parametrize("handover", [False, True], ids=["default", "handover"])
def test_a_reload_answers_the_next_request_of_a_connection_kept_alive_at_the_reload(nginx_factory, handover):
    # nginx's quit closes idle keep-alive connections at once: a request a client sent on one in
    # that instant was lost, at every reload. The old worker first drains them: the next request
    # of each is answered, whichever location it asks, and closes it.
    server = nginx_factory(location("/wsgi/", APPS / "sleepy.py")
                           + asgi_location("/asgi/", APPS / "asgi_app.py")
                           + '  location /static { return 200 "static"; }\n'
                           + "  location = /pid { return 200 $pid; }\n",
                           http_extra="wsgi_reload_handover on;" if handover else "").start()
    old = server.worker_pids()
    paths = {"/wsgi/first": b"/first", "/asgi/stream?3": b"0\n1\n2\n", "/static": b"static"}
    kept = {}
    for path, body in paths.items():
        kept[path] = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        kept[path].request("GET", path)
        r = kept[path].getresponse()
        assert (r.status, r.read()) == (200, body)
        assert r.getheader("Connection") in (None, "keep-alive"), r.getheaders()
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "told to quit by a reload" in server.error_log(), what="the old worker's drain")
    # The draining worker accepts nothing more: a new connection is the new workers'.
    assert int(requests.get(server.url("/pid"), timeout=10).text) not in old
    for path, body in paths.items():
        kept[path].request("GET", path)
        r = kept[path].getresponse()
        assert (r.status, r.read(), r.getheader("Connection")) == (200, body, "close"), path
        kept[path].close()
    wait_for(lambda: not set(old) & set(server.worker_pids()), 30, "the old worker's exit")
    log = server.error_log()
    assert "exited on signal" not in log and "[alert]" not in log, log[-3000:]


def test_a_reloads_drain_sends_http2_clients_to_the_new_workers_at_once(nginx_factory):
    # An idle HTTP/1 keep-alive connection holds the old worker's drain (up to 2 s). An HTTP/2
    # client needs no drain: the GOAWAY nginx's exit sends it comes as the drain begins, so its
    # next request is the new workers', under the new configuration, not the draining worker's.
    server = nginx_factory(location("/wsgi/", APPS / "sleepy.py") + "  location = /pid { return 200 $pid; }\n",
                           server_extra="http2 on;").start()
    old = server.worker_pids()
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    kept.request("GET", "/pid")
    assert int(kept.getresponse().read()) in old
    with httpx.Client(http1=False, http2=True, timeout=10) as h2:
        first = h2.get(server.url("/pid"))
        assert (first.http_version, int(first.text) in old) == ("HTTP/2", True)
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: "told to quit by a reload" in server.error_log(), what="the old worker's drain")
        again = h2.get(server.url("/pid"))
        assert again.status_code == 200 and int(again.text) not in old, again.text
    # The HTTP/1 connection is still the draining worker's, for one more request.
    kept.request("GET", "/pid")
    r = kept.getresponse()
    assert (int(r.read()) in old, r.getheader("Connection")) == (True, "close")
    wait_for(lambda: not set(old) & set(server.worker_pids()), 30, "the old worker's exit")
    log = server.error_log()
    assert "exited on signal" not in log and "[alert]" not in log, log[-3000:]


def test_reloads_under_keep_alive_load_lose_no_request(nginx_factory):
    server = nginx_factory(location("/", APPS / "sleepy.py"), workers=2).start()
    wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d5s", "--timeout", "20s", server.url("/fast")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)
    for _ in range(3):
        server.send_signal(signal.SIGHUP)
        time.sleep(1)
    out, _ = wrk.communicate(timeout=60)
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    assert requests_done > 100, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    log = server.error_log()
    assert "told to quit by a reload" in log and "exited on signal" not in log, log[-3000:]


# Recycling (nginx's wsgi_max_requests/wsgi_max_rss, Apache's NgxWsgiMaxRequests/NgxWsgiMaxRSS)
# runs on both servers: the directive's name and where it goes differ.
MAX_REQUESTS = {"nginx": "wsgi_max_requests", "apache": "NgxWsgiMaxRequests"}
MAX_RSS = {"nginx": "wsgi_max_rss", "apache": "NgxWsgiMaxRSS"}


def recycling(nginx_line, apache_line, nginx=None, apache=None):
    """Server-level directives for both servers, plus constructor arguments for each."""
    return dict(nginx=dict(http_extra=nginx_line, **(nginx or {})),
                apache=dict(server_extra=apache_line, **(apache or {})))


def test_work_an_app_leaves_after_the_response_is_done_before_the_process_exits(wsgi_factory):
    # A thread a request starts is not a daemon thread (as under gunicorn): the exit waits for
    # it. A ThreadPoolExecutor made at import gets its work done, then its idle workers are
    # told to end, as Python's own exit does, instead of holding the exit until the timeout.
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-after-response-"))
    tmp_path.chmod(0o777)  # Apache's children run as another user
    server = wsgi_factory([route("/", APPS / "after_response.py")],
                          nginx=dict(main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};"),
                          apache=dict(env={"NGX_WSGI_TEST_MARKS": str(tmp_path)})).start()
    assert requests.get(server.url("/thread"), timeout=10).text == "daemon=False"
    assert requests.get(server.url("/pool"), timeout=10).text == "queued"
    worker = server.worker_pids()[0]
    # nginx's quit, Apache's graceful-stop.
    assert server.stop(sig=signal.SIGQUIT if wsgi_factory.kind == "nginx" else signal.SIGWINCH) == 0
    assert (tmp_path / f"thread-{worker}").exists(), "the request's thread finished its work"
    assert (tmp_path / f"pool-{worker}").exists(), "the executor finished its work"
    log = server.error_log()
    assert "still running after" not in log, log[-3000:]
    assert "exited on signal" not in log and "exit signal" not in log


def test_workers_recycle_after_max_requests_without_losing_requests(wsgi_factory):
    server = wsgi_factory([route("/", APPS / "sleepy.py")],
                          **recycling("wsgi_max_requests 300 jitter=100;", "NgxWsgiMaxRequests 300 jitter=100",
                                      nginx=dict(workers=2), apache=dict(processes=2))).start()
    wait_for(lambda: len(server.worker_pids()) == 2, what="two worker processes")
    first = set(server.worker_pids())
    # wrk's own 2 s timeout would count a connection waiting for a recycled worker's successor
    # on a loaded machine as a socket error. Its connections are kept alive: a recycling worker
    # drains them before it goes.
    out = subprocess.run(["wrk", "-t2", "-c8", "-d4s", "--timeout", "20s", server.url("/fast")],
                         capture_output=True, text=True, timeout=60).stdout
    done = int(re.search(r"(\d+) requests in", out).group(1))
    assert done > 1200, out  # at least two recycles' worth (at most 400 each, two processes)
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    log = server.error_log()
    assert log.count(f"({MAX_REQUESTS[server.kind]}); recycling it") >= 2
    # Apache: never both children stopped at once (the second waits for the first's successor),
    # which Apache's parent reports as it starts two children into the waiting connections.
    assert " 0 active children" not in log, log
    # nginx's master keeps its two workers; Apache's parent keeps the spare threads it is told to.
    wait_for(lambda: server.worker_pids() and not first & set(server.worker_pids())
             and (server.kind == "apache" or len(server.worker_pids()) == 2), what="fresh worker processes")
    assert "exited on signal" not in log and "exit signal" not in log


def test_the_response_that_ends_a_worker_says_the_connection_closes(wsgi_factory):
    # The worker leaves once it has sent it: a client that took the connection as kept alive
    # would send its next request into the closing socket.
    server = wsgi_factory([route("/", APPS / "sleepy.py")],
                          **recycling("wsgi_max_requests 1;", "NgxWsgiMaxRequests 1")).start()
    for i in range(2):
        wait_for(lambda: server.worker_pids(), what="a worker")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", f"/last{i}")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, f"/last{i}".encode())
        assert r.getheader("Connection") == "close", r.getheaders()
        conn.close()


def test_a_recycling_worker_answers_the_next_request_of_a_connection_idle_at_the_decision(wsgi_factory):
    # nginx's exit (and Apache's event MPM's) closes idle keep-alive connections at once: a
    # request sent on one in that instant was lost. The recycling worker first drains them: its
    # next response closes it.
    server = wsgi_factory([route("/", APPS / "sleepy.py")],
                          **recycling("wsgi_max_requests 2;", "NgxWsgiMaxRequests 2")).start()
    worker = server.worker_pids()
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    idle.request("GET", "/first")
    r = idle.getresponse()
    assert (r.status, r.read()) == (200, b"/first")
    assert r.getheader("Connection") in (None, "keep-alive"), r.getheaders()
    last = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    last.request("GET", "/second")
    r = last.getresponse()
    assert (r.status, r.read(), r.getheader("Connection")) == (200, b"/second", "close")
    last.close()
    idle.request("GET", "/third")
    r = idle.getresponse()
    assert (r.status, r.read(), r.getheader("Connection")) == (200, b"/third", "close")
    idle.close()
    wait_for(lambda: server.worker_pids() and server.worker_pids() != worker, what="a fresh worker")
    assert "exited on signal" not in server.error_log() and "exit signal" not in server.error_log()


def wait_for_workers_in_their_event_loops(server, count):
    """Until `count` workers wait in epoll_wait: a worker does only once its start (the apps'
    import) is over, and only then accepts."""
    def in_event_loop(pid):
        try:
            return pathlib.Path(f"/proc/{pid}/wchan").read_text() in ("do_epoll_wait", "ep_poll")
        except OSError:
            return False

    wait_for(lambda: len(server.worker_pids()) == count and all(map(in_event_loop, server.worker_pids())),
             what=f"{count} worker processes in their event loops")


def test_a_worker_due_while_no_other_accepts_serves_on_until_one_does(nginx_factory, tmp_path):
    # Workers that served about as many requests come due together: the second one recycled
    # while the first one's successor still imported the app, and none served meanwhile (pretix,
    # 2 workers, wsgi_max_requests 80: 7 s without an answer). It serves on until one accepts.
    tmp_path.chmod(0o777)
    app = tmp_path / "gated.py"
    app.write_text(
        "import os, time\n"
        "here = os.path.dirname(__file__)\n"
        "if os.environ.get('NGX_WSGI_CONFIG_CHECK') != '1':\n"
        "    while os.path.exists(os.path.join(here, 'gate')) and not os.path.exists(os.path.join(here, 'go')):\n"
        "        time.sleep(0.05)\n"
        "    open(os.path.join(here, f'loaded.{os.getpid()}'), 'w').close()\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [str(os.getpid()).encode()]\n")
    server = nginx_factory(location("/", app), http_extra="wsgi_max_requests 10;", workers=2).start()
    first = server.worker_pids()
    wait_for(lambda: all((tmp_path / f"loaded.{pid}").exists() for pid in first), what="the first workers' imports")
    (tmp_path / "gate").touch()  # their successors wait at their import until `go`
    waiting = "but no other worker accepts now (they are starting): it serves on until one does"
    answers = []
    while waiting not in server.error_log() and len(answers) < 100:
        r = requests.get(server.url("/"), timeout=10)
        answers.append((r.status_code, int(r.text)))
    assert waiting in server.error_log(), server.error_log()[-3000:]
    for _ in range(10):  # past its limit, the other worker's successor still importing
        r = requests.get(server.url("/"), timeout=10)
        answers.append((r.status_code, int(r.text)))
    assert all(status == 200 and pid in first for status, pid in answers), answers
    (tmp_path / "go").touch()
    wait_for(lambda: "(wsgi_max_requests) (another worker accepts after" in server.error_log(),
             what="the due worker recycling once its sibling's successor accepts")
    wait_for(lambda: requests.get(server.url("/"), timeout=10).text not in map(str, first), 30,
             "the fresh workers serving")


def test_a_recycling_worker_leaves_its_new_connections_to_the_other_workers(nginx_factory):
    # It went on accepting while it drained, one request per connection (each response closes
    # it): under keep-alive load and frequent recycling a third of the responses said close.
    # With another worker accepting, the shared socket's new connections are that one's, kept
    # alive; the drain still answers the recycling worker's own connections.
    server = nginx_factory(location("/", APPS / "sleepy.py") + "  location = /pid { return 200 $pid; }\n",
                           http_extra="wsgi_max_requests 20;", workers=2).start()
    # One still importing takes nothing from the recycling one, which then goes on accepting.
    wait_for_workers_in_their_event_loops(server, 2)

    def served_by(conn):
        conn.request("GET", "/pid")
        r = conn.getresponse()
        assert r.status == 200
        return int(r.read()), r.getheader("Connection") in (None, "keep-alive")

    opened = {}
    while not any(len(conns) >= 2 for conns in opened.values()):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        pid, kept = served_by(conn)
        assert kept, (pid, server.error_log()[-3000:])
        opened.setdefault(pid, []).append(conn)
    recycled = next(pid for pid, conns in opened.items() if len(conns) >= 2)
    busy, idle = opened[recycled][:2]
    for i in range(20):  # the app's requests bring the worker to wsgi_max_requests
        busy.request("GET", f"/{i}")
        r = busy.getresponse()
        assert (r.status, r.read()) == (200, f"/{i}".encode())
        if r.getheader("Connection") == "close":
            break
    assert r.getheader("Connection") == "close", "the worker recycles"
    busy.close()
    # `idle` holds the recycling worker's drain (2 s at most): new connections meanwhile.
    fresh = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(10)]
    served = [served_by(conn) for conn in fresh]
    assert all(pid != recycled and kept for pid, kept in served), (recycled, served, server.error_log()[-3000:])
    idle.request("GET", "/last")
    r = idle.getresponse()
    assert (r.status, r.read(), r.getheader("Connection")) == (200, b"/last", "close")
    for conn in fresh + [c for conns in opened.values() for c in conns]:
        conn.close()
    wait_for(lambda: len(server.worker_pids()) == 2 and recycled not in server.worker_pids(), what="a fresh worker")
    log = server.error_log()
    assert "(wsgi_max_requests); recycling it" in log and "exited on signal" not in log, log[-3000:]


@pytest.mark.parametrize("handoff", ["on", "off"])
def test_a_worker_busy_in_python_leaves_its_new_connections_to_an_idle_one(nginx_factory, tmp_path, handoff):
    # A request that holds a worker's core (a report, a schema built for seconds) made every
    # new connection that worker took wait for the GIL behind it, the other worker idle.
    server = nginx_factory(location("/", APPS / "sleepy.py") + "  location = /pid { return 200 $pid; }\n",
                           http_extra="" if handoff == "on" else "wsgi_busy_handoff off;", workers=2).start()
    wait_for_workers_in_their_event_loops(server, 2)

    def fresh_pid():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("GET", "/pid")
            r = conn.getresponse()
            assert r.status == 200
            return int(r.read())
        finally:
            conn.close()

    stop = tmp_path / "stop"
    spun = []
    spinner = threading.Thread(target=lambda: spun.append(
        requests.get(server.url(f"/spin-until?{stop}"), timeout=60).status_code))
    spinner.start()
    try:
        wait_for(lambda: pathlib.Path(f"{stop}.pid").exists(), what="the spinning request inside Python")
        busy = int(pathlib.Path(f"{stop}.pid").read_text())
        if handoff == "off":
            time.sleep(1)  # ten of the looks that would have seen it busy
            assert any(fresh_pid() == busy for _ in range(200)), "the busy worker still accepts"
            assert "busy in Python" not in server.error_log()
            return
        wait_for(lambda: f"{busy}#{busy}: wsgi: this worker is busy in Python" in server.error_log(),
                 what="the busy worker leaving its new connections")
        served = [fresh_pid() for _ in range(30)]
        assert busy not in served and set(served) <= set(server.worker_pids()), (busy, served)
    finally:
        stop.touch()
        spinner.join()
        assert spun == [200]
    wait_for(lambda: f"{busy}#{busy}: wsgi: this worker takes new connections again" in server.error_log(),
             what="the worker taking new connections again")
    # nginx's exclusive wake-ups favour one worker; it lets the others in every 16 connections.
    assert any(fresh_pid() == busy for _ in range(200)), "the worker accepts again"
    log = server.error_log()
    assert "[alert]" not in log and "[crit]" not in log, log[-3000:]


def test_a_busy_worker_closes_its_keep_alive_connections_one_at_a_time_for_their_clients_to_move(
        nginx_factory, tmp_path):
    # A few keep-alive clients (a load balancer's connections, wrk -c4) that all landed on one
    # worker stayed there: it served them all on its one core while the other idled (pretix,
    # 4 clients, 2 workers: half gunicorn's requests per second). Once busy, it closes them one
    # at a time after a response, and each client reconnects to the other worker.
    server = nginx_factory(location("/", APPS / "sleepy.py") + "  location = /pid { return 200 $pid; }\n",
                           workers=2).start()
    wait_for_workers_in_their_event_loops(server, 2)
    on_one = []
    for _ in range(100):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/pid")
        pid = int(conn.getresponse().read())
        if not on_one or pid == on_one[0][1]:
            on_one.append((conn, pid))
        else:
            conn.close()
        if len(on_one) == 2:
            break
    assert len(on_one) == 2, "two keep-alive connections on one worker"
    (spinning, busy), (kept, _) = on_one
    stop = tmp_path / "stop"
    spun = []

    def spin():
        spinning.request("GET", f"/spin-until?{stop}")
        spun.append(spinning.getresponse().status)
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        wait_for(lambda: pathlib.Path(f"{stop}.pid").exists(), what="the spinning request inside Python")
        assert int(pathlib.Path(f"{stop}.pid").read_text()) == busy
        wait_for(lambda: f"{busy}#{busy}: wsgi: this worker is busy in Python" in server.error_log(),
                 what="the busy worker leaving its new connections")
        answers = []

        def closed_by_the_busy_worker():
            kept.request("GET", "/pid")
            r = kept.getresponse()
            answers.append((int(r.read()), r.getheader("Connection")))
            return answers[-1][1] == "close"
        wait_for(closed_by_the_busy_worker, what="the keep-alive connection closed after a response")
        assert {pid for pid, _ in answers} == {busy}, answers
        kept.close()
        again = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        again.request("GET", "/pid")
        assert int(again.getresponse().read()) != busy, "the client's new connection went to the other worker"
        again.close()
    finally:
        stop.touch()
        spinner.join()
        spinning.close()
    assert spun == [200]
    wait_for(lambda: re.search(rf"{busy}#{busy}: wsgi: this worker takes new connections again \(.*\); meanwhile "
                               r"it closed \d+ keep-alive connections? after a response", server.error_log()),
             what="the worker taking new connections again")


def test_a_worker_with_no_room_takes_no_more_while_another_has_some(nginx_factory, tmp_path):
    # The busy worker left its new connections to the idle one, which went on taking them past
    # its worker_connections while the busy one had room: 29 of 90 held connections were reset
    # ("worker_connections are not enough"); without the hand-off none was. (With 64 and 90.)
    server = nginx_factory(location("/", APPS / "sleepy.py") + "  location = /pid { return 200 $pid; }\n",
                           http_extra="client_header_timeout 60s;", workers=2, worker_connections=128).start()
    wait_for_workers_in_their_event_loops(server, 2)
    stop = tmp_path / "stop"
    spinner = threading.Thread(target=lambda: requests.get(server.url(f"/spin-until?{stop}"), timeout=60))
    spinner.start()
    held = []
    try:
        wait_for(lambda: pathlib.Path(f"{stop}.pid").exists(), what="the spinning request inside Python")
        busy = int(pathlib.Path(f"{stop}.pid").read_text())
        wait_for(lambda: f"{busy}#{busy}: wsgi: this worker is busy in Python" in server.error_log(),
                 what="the busy worker leaving its new connections")
        for _ in range(180):  # more than one worker's 128, fewer than both workers'
            s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
            s.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n")
            held.append(s)
            time.sleep(0.02)
        answers = []
        for s in held:
            s.sendall(b"Connection: close\r\n\r\n")
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
            answers.append(data.split(b"\r\n\r\n", 1)[-1] if data.startswith(b"HTTP/1.1 200") else data[:40])
    finally:
        stop.touch()
        spinner.join()
        for s in held:
            s.close()
    assert all(a.isdigit() for a in answers), [a for a in answers if not a.isdigit()]
    assert {int(a) for a in answers} == set(server.worker_pids()), "both workers took some"
    log = server.error_log()
    assert "worker_connections are not enough" not in log and "this worker has no room for more" in log, log[-3000:]
    assert "[crit]" not in log and "[alert]" not in log, log[-3000:]


def test_a_streamed_or_asgi_response_that_ends_a_worker_says_the_connection_closes(nginx_factory):
    # Their heads go out before the request is done: the last request is known as it starts.
    server = nginx_factory(location("/stream/", f"{APPS / 'streaming.py'}:big_stream")
                           + asgi_location("/asgi/", APPS / "asgi_app.py"),
                           http_extra="wsgi_max_requests 1;").start()
    for path, size in [("/stream/", 1 << 20), ("/asgi/stream?3", 6)] * 2:
        wait_for(lambda: server.worker_pids(), what="a worker")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", path)
        r = conn.getresponse()
        assert (r.status, len(r.read())) == (200, size)
        assert r.getheader("Connection") == "close", (path, r.getheaders())
        conn.close()


def test_worker_recycles_when_it_outgrows_max_rss(wsgi_factory):
    server = wsgi_factory([route("/", APPS / "sleepy.py")],
                          **recycling("wsgi_max_rss 48m;", "NgxWsgiMaxRSS 48m")).start()
    first = server.worker_pids()
    assert requests.get(server.url("/grow")).text == "/grow"
    wait_for(lambda: server.worker_pids() not in ([], first), what="a fresh worker process")
    assert f"({MAX_RSS[server.kind]} 48 MiB); recycling it" in server.error_log()
    assert requests.get(server.url("/after")).text == "/after"


def test_recycling_directives_are_checked(wsgi_factory):
    bad = {"nginx": [("wsgi_max_requests 0;", "above 0"), ("wsgi_max_requests 5 spread=1;", "expected jitter="),
                     ("wsgi_max_rss lots;", "invalid value")],
           "apache": [("NgxWsgiMaxRequests 0", "above 0"), ("NgxWsgiMaxRequests 5 spread=1", "expected jitter="),
                      ("NgxWsgiMaxRSS lots", "invalid value")]}
    for line, message in bad[wsgi_factory.kind]:
        result = wsgi_factory([route("/", APPS / "sleepy.py")], **recycling(line, line)).run("-t")
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert line.split()[0] in result.stderr, "the error names the directive"
    # Gigabytes as Apache writes them (nginx's own size parser stops at megabytes).
    for good in ("2g", "3G", "4096m", "512k", "1073741824"):
        line = f"{MAX_RSS[wsgi_factory.kind]} {good}" + (";" if wsgi_factory.kind == "nginx" else "")
        result = wsgi_factory([route("/", APPS / "sleepy.py")], **recycling(line, line)).run("-t")
        assert result.returncode == 0, (line, result.stderr)


def test_each_app_is_imported_once_per_worker(nginx_factory, tmp_path):
    app = APPS / "lifecycle_app.py"
    # The same file by other spellings: a symlinked directory, a `..`.
    (tmp_path / "linked").symlink_to(APPS, target_is_directory=True)
    server = nginx_factory(
        location("/a/", app) + location("/b/", app) + location("/c/", f"{app}:application")
        + location("/d/", tmp_path / "linked" / "lifecycle_app.py")
        + location("/e/", f"{APPS}/../{APPS.name}/lifecycle_app.py")
        + location("/other/", APPS / "sleepy.py"),
        main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
    ).start()
    worker = server.worker_pids()[0]
    pids = {requests.get(server.url(p)).text for p in ["/a/", "/b/", "/c/", "/d/", "/e/"]}
    assert pids == {str(worker)}
    assert requests.get(server.url("/other/x")).text == "/x"
    assert (tmp_path / f"imported-{worker}").read_text().count("\n") == 1


def test_a_worker_whose_every_thread_is_stuck_past_its_deadline_is_replaced(nginx_factory):
    # Two threads, each held past its deadline by a call that does not return (time.sleep(3600):
    # its TimeoutError waits to land): the worker can run nothing more. A request that comes
    # once that has lasted (5 s at least) has the worker replaced; the fresh one serves.
    # (No worker_shutdown_timeout: the stuck requests are not waited for at the exit.)
    server = nginx_factory(
        location("/", APPS / "sleepy.py", "wsgi_read_timeout 500ms;"),
        http_extra="wsgi_max_threads 2; wsgi_queue_timeout 1s;").start()
    assert requests.get(server.url("/fast"), timeout=10).text == "/fast"
    [worker] = server.worker_pids()
    assert [requests.get(server.url("/forever"), timeout=10).status_code for _ in range(2)] == [504, 504]
    # Stuck now; a request meanwhile waits for a thread, in vain (its deadline passes first).
    assert requests.get(server.url("/fast"), timeout=10).status_code == 504
    _until_replaced(server, worker, "its 2 Python threads (wsgi_max_threads) are all held by requests past "
                                    "wsgi_read_timeout in calls that do not return")


def _until_replaced(server, worker, held):
    """Asks until the worker is recycled for its stuck pool (at a request: a 503), then waits for
    its replacement, which serves."""
    alert = "wsgi: this worker has run none of its queued WSGI requests for "
    deadline = time.monotonic() + 30
    while alert not in server.error_log() and time.monotonic() < deadline:
        requests.get(server.url("/fast"), timeout=10)
        time.sleep(0.5)
    log = server.error_log()
    assert alert in log and held in log.split(alert, 1)[1].split("\n", 1)[0], log[-3000:]
    assert "wsgi: this worker has every Python thread stuck; recycling it" in log
    wait_for(lambda: server.worker_pids() and worker not in server.worker_pids(), what="a fresh worker")
    assert "are cut as the worker exits; exiting without finalizing Python" in server.error_log()
    wait_for(lambda: requests.get(server.url("/fast"), timeout=10).text == "/fast", what="the fresh worker's answer")


def test_a_worker_whose_requests_start_no_more_behind_a_call_that_keeps_the_gil_is_replaced(nginx_factory):
    # One request holds the GIL in C code past its deadline: the other threads can run nothing
    # (they wait for the GIL before they take a request), though they are not all lost.
    shared = tempfile.mkdtemp(prefix="ngx-wsgi-gil-")
    os.chmod(shared, 0o777)
    fifo = os.path.join(shared, "gil")
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    server = nginx_factory(
        location("/", APPS / "sleepy.py", "wsgi_read_timeout 500ms;"),
        http_extra="wsgi_max_threads 4; wsgi_queue_timeout 1s;").start()
    assert requests.get(server.url("/fast"), timeout=10).text == "/fast"
    [worker] = server.worker_pids()
    holder = threading.Thread(target=lambda: requests.get(server.url(f"/hold-gil?{fifo}"), timeout=30))
    holder.start()
    try:
        wait_for(lambda: os.path.exists(fifo + ".held"), what="the app to hold the GIL")
        _until_replaced(server, worker, "or one of those calls keeps the GIL")
    finally:
        try:  # releases a holder still there (no reader: its worker is gone, ENXIO)
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"x")
            os.close(fd)
        except OSError:
            pass
        holder.join(timeout=30)


def test_a_crashed_worker_is_replaced_and_the_others_keep_serving(nginx_factory):
    server = nginx_factory(location("/", APPS / "sleepy.py"), workers=2).start()
    deadline = time.monotonic() + 10
    while len(server.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = set(server.worker_pids())
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("/crash"), timeout=10)
    while time.monotonic() < deadline and (len(server.worker_pids()) < 2 or set(server.worker_pids()) == before):
        time.sleep(0.05)
    after = set(server.worker_pids())
    assert len(after) == 2 and len(after & before) == 1, "one worker replaced, its neighbour untouched"
    # Under AddressSanitizer (scripts/test-asan) the sanitizer reports the crash and ends the worker.
    crash = "exited with code 1" if "ASAN_OPTIONS" in os.environ else "exited on signal 11"
    assert crash in server.error_log()
    for i in range(10):
        assert requests.get(server.url(f"/ok{i}"), timeout=10).text == f"/ok{i}"


def test_faulthandler_at_import_logs_the_python_stack_of_a_crash(nginx_factory):
    # nginx sets no handler for faults: the app's faulthandler keeps them, and a crash in C code
    # says where Python was.
    server = nginx_factory(location("/", APPS / "crasher.py")).start()
    assert requests.get(server.url("/"), timeout=10).text == "alive"
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("/?crash"), timeout=10)
    wait_for(lambda: "exited on signal" in server.error_log() or "exited with code" in server.error_log(),
             what="the crash")
    log = server.error_log()
    assert "an app set a handler for SIGSEGV" not in log
    assert "Fatal Python error: Segmentation fault" in log, log[-3000:]
    assert re.search(r'File ".*crasher.py", line \d+ in crash_in_c_code', log), log[-3000:]
    # faulthandler then hands the fault on to the handler it replaced: the default one (the worker
    # dies of it) or, in scripts/test-asan, the sanitizer's (which reports it and exits with 1).
    assert ("exited with code 1" if "ASAN_OPTIONS" in os.environ else "exited on signal 11") in log
    def alive():
        try:
            return requests.get(server.url("/"), timeout=10).text == "alive"
        except requests.ConnectionError:
            return False
    wait_for(alive, what="a new worker")


def test_a_python_handler_for_sigsegv_is_put_back_and_a_crash_still_ends_the_worker(nginx_factory):
    server = nginx_factory(location("/", APPS / "python_segv.py")).start()
    assert requests.get(server.url("/"), timeout=10).text == "alive"
    assert "an app set a handler for SIGSEGV while it was imported" in server.error_log()
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(server.url("/?crash"), timeout=10)
    wait_for(lambda: "exited on signal 11" in server.error_log() or "exited with code 1" in server.error_log(),
             what="the worker's death (not a fault repeated for ever)")


def test_gevent_monkey_patching_at_import_is_warned_about(nginx_factory):
    server = nginx_factory(location("/", APPS / "green_patched.py")).start()
    assert requests.get(server.url("/"), timeout=10).text == "served"
    assert re.search(r"\[warn\] .*wsgi: gevent's monkey-patching replaced Python's threading while the apps "
                     r"were imported: threads the app starts .* are greenlets that never run here",
                     server.error_log()), server.error_log()[-2000:]


def test_a_recycling_worker_answers_the_next_request_of_a_connection_whose_response_promised_keep_alive(nginx_factory):
    # The response was under way when the worker decided to recycle, its head saying keep-alive:
    # nginx's exit closed the connection right after it, and the request its client sent next,
    # at once, was lost. The drain waits for it, and its next response closes it.
    server = nginx_factory(location("/", f"{APPS / 'streaming.py'}:brief"), http_extra="wsgi_max_requests 3;").start()
    worker = server.worker_pids()
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    kept.request("GET", "/?1.5")
    r = kept.getresponse()
    assert r.getheader("Connection") in (None, "keep-alive") and r.read(5) == b"first", r.getheaders()
    for _ in range(3):  # the third to end brings the worker to wsgi_max_requests
        other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        other.request("GET", "/")
        assert other.getresponse().read() == b"firstlast"
        other.close()
    assert r.read() == b"last"
    kept.request("GET", "/")
    r = kept.getresponse()
    assert (r.status, r.read(), r.getheader("Connection")) == (200, b"firstlast", "close")
    kept.close()
    wait_for(lambda: server.worker_pids() and server.worker_pids() != worker, what="a fresh worker")


WSGI_OK = '''def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi VERSION"]
'''
ASGI_OK = '''async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"asgi VERSION"})
'''


@pytest.mark.parametrize("broken", ["wsgi", "asgi"])
def test_a_worker_that_cannot_load_an_app_serves_the_rest_and_tries_again(nginx_factory, tmp_path, broken):
    # The configuration check imported the apps; one broken on disk since (a deploy under way)
    # made every fresh worker (a recycled one, or one replacing a crashed one) exit with a code
    # nginx does not respawn: with no worker left, nginx held connections that nobody answered.
    files = {"wsgi": tmp_path / "wsgi_app.py", "asgi": tmp_path / "asgi_app.py"}
    files["wsgi"].write_text(WSGI_OK.replace("VERSION", "1"))
    files["asgi"].write_text(ASGI_OK.replace("VERSION", "1"))
    server = nginx_factory(location("/w/", files["wsgi"]) + asgi_location("/a/", files["asgi"])
                           + "  location = /static { return 200 static; }\n").start()
    assert requests.get(server.url("/w/"), timeout=10).text == "wsgi 1"
    assert requests.get(server.url("/a/"), timeout=10).text == "asgi 1"
    files[broken].write_text("def application(:\n")
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: server.worker_pids() not in ([], [worker]), what="a fresh worker")
    ok = {"wsgi": "/w/", "asgi": "/a/"}
    assert requests.get(server.url("/static"), timeout=10).text == "static"
    other = "asgi" if broken == "wsgi" else "wsgi"
    assert requests.get(server.url(ok[other]), timeout=10).text == f"{other} 1"
    assert [requests.get(server.url(ok[broken]), timeout=10).status_code for _ in range(5)] == [500] * 5
    log = server.error_log()
    # Once per worker, not a line per request (a flood under load).
    assert log.count("the app of this location is not running in this worker") == 1, log[-3000:]
    assert re.search(rf'\[alert\].*{broken}_app "{re.escape(str(files[broken]))}" \(in .*\) cannot be loaded: .*SyntaxError', log, re.S), log[-3000:]
    assert "this worker answers 500 for it and replaces itself in 10 s to try again" in log
    assert "cannot be respawned" not in log
    files[broken].write_text((WSGI_OK if broken == "wsgi" else ASGI_OK).replace("VERSION", "fixed"))
    wait_for(lambda: requests.get(server.url(ok[broken]), timeout=10).text == f"{broken} fixed", timeout=30,
             what="a fresh worker loading the fixed app")


def test_a_worker_whose_python_cannot_start_serves_the_rest_and_tries_again(nginx_factory, tmp_path):
    # A virtualenv rebuilt under a worker that restarts: the same as an app that cannot load.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    app = tmp_path / "app.py"
    app.write_text(WSGI_OK.replace("VERSION", "1"))
    server = nginx_factory(location("/w/", app) + "  location = /static { return 200 static; }\n",
                           home=False, http_extra=f"wsgi_python_home {venv};").start()
    assert requests.get(server.url("/w/"), timeout=10).text == "wsgi 1"
    venv.rename(tmp_path / "away")
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: server.worker_pids() not in ([], [worker]), what="a fresh worker")
    assert requests.get(server.url("/static"), timeout=10).text == "static"
    assert requests.get(server.url("/w/"), timeout=10).status_code == 500
    assert "wsgi: Python cannot start: " in server.error_log()
    (tmp_path / "away").rename(venv)
    wait_for(lambda: requests.get(server.url("/w/"), timeout=10).text == "wsgi 1", timeout=30,
             what="a fresh worker starting Python")
