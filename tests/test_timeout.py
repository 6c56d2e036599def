"""wsgi_read_timeout: a request still inside Python at its deadline gets a 504 at once, its
Python stack goes to the error log, its thread is interrupted and comes back to the pool; other
requests are unaffected."""
import threading
import time

import pytest
import requests

from conftest import APPS, location


@pytest.fixture(scope="module")
def server(nginx_factory):
    return nginx_factory(
        location("/", APPS / "sleepy.py", "wsgi_read_timeout 500ms;") + location("/patient/", APPS / "sleepy.py"),
        main_extra="thread_pool default threads=2;",
    ).start()


def test_deadline_answers_504_and_logs_the_stack(server):
    started = time.monotonic()
    r = requests.get(server.url("/slow"), timeout=30)
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and "504 Gateway Time-out" in r.text
    assert elapsed < 1.5, "the 504 does not wait for the app"
    assert r.headers.get("Connection") == "close"
    time.sleep(2)
    log = server.error_log()
    assert 'wsgi_read_timeout: "GET /slow HTTP/1.1" is still inside Python after 500 ms' in log
    assert "time.sleep(2)" in log and "in application" in log
    assert "TimeoutError" in log, "the interrupted app's traceback is logged when sleep returns"


def test_interrupted_threads_come_back_to_the_pool(server):
    # Four spinning requests on a pool of two threads: each is interrupted, or the later ones
    # (and everything after them) would wait forever.
    results = []
    threads = [threading.Thread(target=lambda: results.append(requests.get(server.url("/spin"), timeout=30).status_code))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [504] * 4
    assert requests.get(server.url("/patient/fast"), timeout=10).text == "/fast"
    spins = '"GET /spin HTTP/1.1" is still inside Python after 500 ms; '
    deadline = time.monotonic() + 10
    while server.error_log().count(spins) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.error_log()
    interrupted = log.count(spins + "interrupting it with TimeoutError")
    never_ran = log.count(spins + "it was still waiting for a thread and will not run")
    # Two ran and were interrupted; those that waited for a thread past their deadline never ran.
    assert interrupted >= 2 and interrupted + never_ran == 4, log


def test_other_requests_are_unaffected(server):
    spinner = threading.Thread(target=lambda: requests.get(server.url("/spin"), timeout=30))
    spinner.start()
    time.sleep(0.1)
    for i in range(10):
        assert requests.get(server.url(f"/quick{i}"), timeout=10).text == f"/quick{i}"
    spinner.join()
    assert requests.get(server.url("/patient/slow"), timeout=10).text == "/slow"
