"""A worker's C heap: glibc's malloc, which CPython uses for every object above 512 bytes. A burst
of requests must not leave the worker at the size of its busiest moment."""

import concurrent.futures
import os
import time

import pytest
import requests

from conftest import APPS, location

# AddressSanitizer's allocator replaces glibc's (and keeps what is freed in its quarantine).
pytestmark = pytest.mark.skipif("ASAN_OPTIONS" in os.environ, reason="glibc's malloc is not the allocator under ASan")

APP = f"{APPS}/heap_burst.py"


def worker_kib(server):
    (pid,) = server.worker_pids()
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def burst(server, requests_at_once, hold="0.5"):
    """`requests_at_once` requests, each holding 4 MB on a thread of its own at the same time;
    the worker's largest resident size any of them saw (KiB)."""
    def one(_):
        r = requests.get(server.url(f"/hold?{hold}"), timeout=60)
        assert r.status_code == 200, r.text
        return int(r.text.split()[0])

    with concurrent.futures.ThreadPoolExecutor(requests_at_once) as pool:
        return max(pool.map(one, range(requests_at_once)))


@pytest.mark.parametrize("hold", ["0.5", "2.5"])
def test_a_burst_s_memory_goes_back_to_the_system_once_the_worker_is_quiet(nginx_factory, hold):
    # Requests that outlast a second free their memory as they end, seconds after they started.
    server = nginx_factory(location("/", APP))
    server.start(env={"MALLOC_ARENA_MAX": None})
    assert requests.get(server.url("/"), timeout=10).status_code == 200
    before = worker_kib(server)
    peak = burst(server, 48, hold)
    grown = peak - before
    assert grown > 100 * 1024, f"the burst did not grow the worker: {before} -> {peak} KiB"
    # The burst's threads stay (idle threads end after 60 s); what they freed goes back.
    deadline = time.monotonic() + 15
    while worker_kib(server) > before + grown // 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = worker_kib(server)
    assert after <= before + grown // 4, f"before {before}, peak {peak}, {after} KiB once quiet"


def test_a_worker_s_python_threads_share_two_malloc_arenas(nginx_factory):
    server = nginx_factory(location("/", APP))
    server.start(env={"MALLOC_ARENA_MAX": None})
    burst(server, 24, hold="0.2")
    # glibc's own default on this machine would be 8 per core.
    assert requests.get(server.url("/arenas"), timeout=10).text == "2"


def test_malloc_arena_max_in_nginx_s_environment_wins(nginx_factory):
    server = nginx_factory(location("/", APP))
    server.start(env={"MALLOC_ARENA_MAX": "1"})
    burst(server, 8, hold="0.2")
    assert requests.get(server.url("/arenas"), timeout=10).text == "1"
