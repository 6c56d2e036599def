"""Prometheus metrics (nginx's wsgi_status, Apache's SetHandler ngx-wsgi-status): the text of all
the server's processes together, counts moving as requests are made, surviving restarts, and
gauges that do not keep what a dead process had in flight."""
import os
import signal
import socket
import struct
import threading

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import APPS, asgi_location, location, route, status, wait_for

RESTART = {"nginx": signal.SIGHUP, "apache": signal.SIGUSR1}


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory(
        [route("/", APPS / "sleepy.py"),
         route("/hurry/", APPS / "sleepy.py", "wsgi_read_timeout 200ms;", "NgxWsgiRequestTimeout 200ms"),
         route("= /broken", f"{APPS}/misbehaving.py:raises"),
         status("/metrics")],
        nginx=dict(workers=2),
        apache=dict(processes=2),
    ).start()


def scrape(server):
    r = requests.get(server.url("/metrics"))
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            key = s.name + "".join(f'{{{k}="{v}"}}' for k, v in sorted(s.labels.items()))
            samples[key] = s.value
    return samples


def test_counts_move_with_requests(server):
    before = scrape(server)
    for i in range(10):
        assert requests.get(server.url(f"/fast{i}")).status_code == 200
    assert requests.get(server.url("/broken")).status_code == 500
    after = scrape(server)
    assert after['wsgi_responses_total{class="2xx"}'] - before['wsgi_responses_total{class="2xx"}'] == 10
    assert after['wsgi_responses_total{class="5xx"}'] - before['wsgi_responses_total{class="5xx"}'] == 1
    assert after["wsgi_request_duration_seconds_count"] - before["wsgi_request_duration_seconds_count"] == 11
    assert after['wsgi_request_duration_seconds_bucket{le="+Inf"}'] == after["wsgi_request_duration_seconds_count"]
    assert after["wsgi_request_duration_seconds_sum"] > before["wsgi_request_duration_seconds_sum"]
    assert after["wsgi_gil_wait_seconds_total"] >= before["wsgi_gil_wait_seconds_total"]
    assert after["wsgi_requests_in_flight"] == 0 and after["wsgi_pool_threads_busy"] == 0
    assert after["wsgi_requests_queued"] == 0
    assert after["wsgi_worker_recycles_total"] == 0
    assert requests.post(server.url("/metrics"), data=b"x").status_code == 405


def test_in_flight_timeouts_and_lost_slots(server):
    before = scrape(server)
    slow = threading.Thread(target=lambda: requests.get(server.url("/slow"), timeout=30))
    slow.start()
    wait_for(lambda: scrape(server)["wsgi_pool_threads_busy"] >= 1, what="the slow request in a thread")
    during = scrape(server)
    assert during["wsgi_requests_in_flight"] >= 1 and during["wsgi_pool_threads_busy"] >= 1
    assert requests.get(server.url("/hurry/slow"), timeout=30).status_code == 504
    stuck = scrape(server)
    assert stuck["wsgi_timeouts_total"] - before["wsgi_timeouts_total"] == 1
    assert stuck["wsgi_lost_slots"] == 1, "the timed-out request is still sleeping in Python"
    # Its 504 went out, and is counted, now: not when its thread comes back (one stuck in C code
    # never does).
    assert stuck['wsgi_responses_total{class="5xx"}'] - before['wsgi_responses_total{class="5xx"}'] == 1
    assert stuck["wsgi_request_duration_seconds_count"] - before["wsgi_request_duration_seconds_count"] == 1
    slow.join()
    wait_for(lambda: scrape(server)["wsgi_lost_slots"] == 0, what="the timed-out request to return")
    after = scrape(server)
    assert after["wsgi_lost_slots"] == 0 and after["wsgi_requests_in_flight"] == 0
    assert after['wsgi_responses_total{class="5xx"}'] - before['wsgi_responses_total{class="5xx"}'] == 1
    # Both took at most about 2 s (the sleep; the timed-out one until its 504); 5 s leaves a
    # loaded machine room.
    assert after['wsgi_request_duration_seconds_bucket{le="5"}'] - before['wsgi_request_duration_seconds_bucket{le="5"}'] == 2


def test_counts_survive_a_graceful_restart(server):
    for i in range(5):
        assert requests.get(server.url(f"/before{i}")).status_code == 200
    before = scrape(server)
    old = set(server.worker_pids())
    server.send_signal(RESTART[server.kind])
    wait_for(lambda: server.worker_pids() and not old & set(server.worker_pids()),
             what="the new generation of processes")
    after = scrape(server)
    for name in ['wsgi_responses_total{class="2xx"}', 'wsgi_responses_total{class="5xx"}', "wsgi_timeouts_total",
                 "wsgi_request_duration_seconds_count"]:
        assert after[name] == before[name], name
    assert requests.get(server.url("/after")).status_code == 200
    assert scrape(server)['wsgi_responses_total{class="2xx"}'] == before['wsgi_responses_total{class="2xx"}'] + 1


def test_a_dead_process_takes_its_gauges_with_it(wsgi_factory):
    server = wsgi_factory([route("/", APPS / "sleepy.py"), status("/metrics")]).start()
    lost = []
    forever = threading.Thread(target=lambda: lost.append(_cut(server.url("/forever"))))
    forever.start()
    wait_for(lambda: scrape(server)["wsgi_requests_in_flight"] == 1, what="the request in flight")
    victims = set(server.worker_pids())
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server.worker_pids() and not victims & set(server.worker_pids()), what="a new process")
    forever.join()
    after = scrape(server)
    assert lost == [True]
    assert after["wsgi_requests_in_flight"] == 0 and after["wsgi_pool_threads_busy"] == 0


def _cut(url):
    try:
        requests.get(url, timeout=60)
        return False
    except requests.ConnectionError:
        return True


def test_a_request_whose_deadline_passes_in_the_queue_is_one_504_and_loses_no_slot(nginx_factory):
    # wsgi_read_timeout shorter than wsgi_queue_timeout, the one thread busy: the queued
    # request's 504 goes out at its deadline and it never runs. It is counted once, as the 504
    # it was, and took no thread: once the busy one returns, no slot stays lost.
    server = nginx_factory(location("/", APPS / "sleepy.py", "wsgi_read_timeout 300ms;") + status("/metrics").for_nginx(),
                           http_extra="wsgi_max_threads 1; wsgi_queue_timeout 1s;").start()
    before = scrape(server)
    answers = []
    slow = threading.Thread(target=lambda: answers.append(requests.get(server.url("/slow"), timeout=30).status_code))
    slow.start()
    wait_for(lambda: scrape(server)["wsgi_pool_threads_busy"] == 1, what="the slow request in the thread")
    assert requests.get(server.url("/queued"), timeout=30).status_code == 504
    slow.join()
    assert answers == [504]
    wait_for(lambda: scrape(server)["wsgi_requests_in_flight"] == 0, what="both requests to end")
    after = scrape(server)
    assert after["wsgi_lost_slots"] == 0 and after["wsgi_requests_queued"] == 0
    assert after["wsgi_timeouts_total"] - before["wsgi_timeouts_total"] == 2
    assert after['wsgi_responses_total{class="5xx"}'] - before['wsgi_responses_total{class="5xx"}'] == 2


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_leaves_during_an_unbuffered_body_is_counted_as_gone_not_as_a_server_error(nginx_factory, how):
    # The app meets the broken body in wsgi.input (or receive()) and fails over it: the client
    # went away, a 499 as nginx logs it, and no 5xx that an alert on server errors would see.
    server = nginx_factory(
        location("/ub/", APPS / "input_app.py", "wsgi_request_buffering off;")
        + asgi_location("/aub/", APPS / "asgi_app.py", "wsgi_request_buffering off;")
        + status("/metrics").for_nginx()).start()
    for path in (b"/ub/sha256", b"/aub/upload-until-gone?left"):
        before = scrape(server)
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        wait_for(lambda: scrape(server)["wsgi_requests_in_flight"] == 1, what="the app reading the body")
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        wait_for(lambda: scrape(server)["wsgi_requests_in_flight"] == 0, what="the request to end")
        after = scrape(server)
        delta = {k: after[k] - before[k] for k in after if k.startswith(("wsgi_responses", "wsgi_client_gone"))}
        assert delta['wsgi_responses_total{class="5xx"}'] == 0, (path, delta)
        assert delta['wsgi_responses_total{class="4xx"}'] == 1, (path, delta)
        assert delta["wsgi_client_gone_total"] == 1, (path, delta)


def test_requests_whose_client_left_in_the_same_read_are_counted_as_the_499s_they_end_as(nginx_factory, tmp_path):
    # Each client closes its side right behind its request: taken for gone, its app's answer is
    # dropped (a thread may have run the app already). Counted as what the request ended as.
    server = nginx_factory(location("/", APPS / "gate.py", f"wsgi_param WSGI_GATE_DIR {tmp_path};")
                           + status("/metrics").for_nginx()).start()
    before = scrape(server)
    answered = 0
    for i in range(40):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(f"GET /run/c{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            answered += data.startswith(b"HTTP/1.1 200")
    wait_for(lambda: scrape(server)["wsgi_requests_in_flight"] == 0, what="every request to end")
    after = scrape(server)
    delta = {k: after[k] - before[k] for k in after if k.startswith(("wsgi_responses", "wsgi_client_gone"))}
    assert delta['wsgi_responses_total{class="2xx"}'] == answered, (answered, delta)
    assert delta['wsgi_responses_total{class="4xx"}'] == 40 - answered, (answered, delta)
    assert delta["wsgi_client_gone_total"] == 40 - answered, (answered, delta)
