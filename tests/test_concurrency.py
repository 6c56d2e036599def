"""Python runs on nginx's thread pool, never on the event loop (on Apache, on the child's worker
threads): a slow request does not hold up the others on the same single worker or child."""
import threading
import time

import pytest
import requests

from conftest import APPS, location, route


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
