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


def peak_kib(server, before, within=3):
    """The worker's largest resident size (KiB) seen in `within` seconds, while the worker takes
    in what its clients sent (checked until it passes `before` by 64 MiB)."""
    peak, deadline = before, time.monotonic() + within
    while time.monotonic() < deadline and peak - before < 64 * 1024:
        peak = max(peak, worker_kib(server))
        time.sleep(0.1)
    return peak


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


def test_compressed_websocket_messages_an_app_leaves_unread_stay_bounded(nginx_factory):
    # A 16 KiB read of messages that compress 1,000 to 1 inflated to 15 MB at once, past the
    # backlog bound (wsgi_stream_buffer) that only counted them afterwards.
    import zlib

    from conftest import asgi_location
    from test_asgi_websocket import frame, raw_socket

    server = nginx_factory(asgi_location("/ws/", f"{APPS}/asgi_ws.py")).start()
    offer = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    raw_socket(server, "/ws/deaf?warm", extra=offer).sock.close()
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    message = (z.compress(b"x" * 1_000_000) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(message) < 1100
    messages = frame(0x41, message) * 40  # RSV1: compressed, text
    before = worker_kib(server)
    sockets = []
    for i in range(4):
        ws = raw_socket(server, f"/ws/deaf?{i}", extra=offer)
        assert b"permessage-deflate" in ws.head
        ws.sock.sendall(messages)  # the socket's buffers take them all at once
        sockets.append(ws)
    # The worker reads what it will (an app that never reads: about one message per socket).
    peak = peak_kib(server, before)
    for ws in sockets:
        ws.sock.close()
    assert peak - before < 24 * 1024, f"{before} -> {peak} KiB for 4 sockets"


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_streams_of_tiny_pieces_to_clients_that_do_not_read_stay_bounded(nginx_factory, kind):
    # wsgi_stream_buffer counted bytes alone: 256 KiB of 1-byte pieces, each with its chunk and
    # nginx's buffer, held 54 MB per stream.
    import socket

    from conftest import asgi_location

    app = f"{APPS}/tiny_pieces.py"
    where = location("/", app) if kind == "wsgi" else asgi_location("/", f"{app}:app")
    server = nginx_factory(where).start()
    before = worker_kib(server)
    clients = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        clients.append(s)
    peak = peak_kib(server, before)
    for s in clients:
        s.close()
    assert peak - before < 24 * 1024, f"{before} -> {peak} KiB for 4 streams"
