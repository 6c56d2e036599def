"""wsgi_status: Prometheus text for all workers together, counts moving as requests are made."""
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import APPS, location


@pytest.fixture(scope="module")
def server(nginx_factory):
    return nginx_factory(
        location("/", APPS / "sleepy.py")
        + location("/hurry/", APPS / "sleepy.py", "wsgi_read_timeout 200ms;")
        + location("= /broken", f"{APPS}/misbehaving.py:raises")
        + "  location = /metrics { wsgi_status; }\n",
        workers=2,
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
    assert after["wsgi_worker_recycles_total"] == 0


def test_in_flight_timeouts_and_lost_slots(server):
    before = scrape(server)
    slow = threading.Thread(target=lambda: requests.get(server.url("/slow"), timeout=30))
    slow.start()
    time.sleep(0.5)
    during = scrape(server)
    assert during["wsgi_requests_in_flight"] >= 1 and during["wsgi_pool_threads_busy"] >= 1
    assert requests.get(server.url("/hurry/slow"), timeout=30).status_code == 504
    stuck = scrape(server)
    assert stuck["wsgi_timeouts_total"] - before["wsgi_timeouts_total"] == 1
    assert stuck["wsgi_lost_slots"] == 1, "the timed-out request is still sleeping in Python"
    slow.join()
    time.sleep(2)
    after = scrape(server)
    assert after["wsgi_lost_slots"] == 0 and after["wsgi_requests_in_flight"] == 0
    assert after['wsgi_responses_total{class="5xx"}'] - before['wsgi_responses_total{class="5xx"}'] == 1
    assert after['wsgi_request_duration_seconds_bucket{le="2.5"}'] - before['wsgi_request_duration_seconds_bucket{le="2.5"}'] == 2
