"""10,000 idle WebSockets and 10,000 server-sent-event streams on ONE nginx worker (issue #16):
every one is connected and gets its first message, a short request is still answered while they
are open, and a broadcast reaches every one of them; the worker's RSS per connection is printed
(not asserted: speed and size belong in bench/, see bench/asgi_idle.py).

The two kinds are opened one after the other (each on a fresh nginx with one worker), not both at
once: a process on this machine may hold at most 20,000 file descriptors (the hard RLIMIT_NOFILE,
which only CAP_SYS_RESOURCE could raise), and 20,000 client connections plus the worker's
listening socket, eventfd and logs are over it. Each batch is 10,000.

Takes about 25 to 40 s on a 2-core machine (connecting 20,000 clients from Python is most of it).
"""
import asyncio
import json
import os
import resource

import pytest

from conftest import APPS, asgi_location

APP = APPS / "asgi_scale.py"
N = 10_000
CONNECTING_AT_ONCE = 512       # handshakes in flight (the listen backlog is 4096)
SOURCES = 4                     # client addresses 127.0.0.2.. (ephemeral ports for each)
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_kib(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE // 1024


@pytest.fixture
def server(nginx_factory):
    """A fresh nginx for each kind: memory the worker freed (and kept) after one batch would
    hide what the next one costs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < N + 512:
        pytest.skip(f"the hard RLIMIT_NOFILE is {hard}: {N} client sockets need {N + 512}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = hard if hard != resource.RLIM_INFINITY else 4 * N
    s = nginx_factory(asgi_location("/", APP), workers=1, worker_connections=N + 1024,
                      main_extra=f"worker_rlimit_nofile {min(nofile, 2 * N)};", listen_extra=" backlog=4096")
    s.start()
    yield s
    s.stop()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def http(port, method, target):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    return body


async def open_one(port, i, kind, gate):
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(f"127.0.0.{2 + i % SOURCES}", 0))
        if kind == "ws":
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            assert head.startswith(b"HTTP/1.1 101"), head
            assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head, head
            assert await asyncio.wait_for(reader.readexactly(7), 60) == b"\x81\x05hello"
        else:
            writer.write(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head, head
            await asyncio.wait_for(reader.readuntil(b"data: hello\n\n"), 60)
        return reader, writer


async def tick(kind, reader):
    if kind == "ws":
        assert await asyncio.wait_for(reader.readexactly(6), 60) == b"\x81\x04tick"
    else:
        await asyncio.wait_for(reader.readuntil(b"data: tick\n\n"), 60)


async def hold(server, kind):
    """Opens N connections of `kind`, checks them and a short request, closes them; returns
    (seconds to connect all, worker RSS KiB before, with them open)."""
    port, worker = server.port, server.worker_pids()[0]
    assert await http(port, "GET", "/hello") == b"Hello, world!"
    before = rss_kib(worker)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    conns = await asyncio.gather(*(open_one(port, i, kind, gate) for i in range(N)))
    connect_time = loop.time() - t0
    try:
        assert json.loads(await http(port, "GET", "/held")) == {"ws": N if kind == "ws" else 0,
                                                                "sse": N if kind == "sse" else 0}
        # A short request while they are all open: answered.
        assert await http(port, "GET", "/hello") == b"Hello, world!"
        with_them = rss_kib(worker)
        counts = json.loads(await http(port, "POST", "/broadcast"))
        assert counts[kind] == N, counts
        await asyncio.gather(*(tick(kind, r) for r, _ in conns))
    finally:
        for _, w in conns:
            w.close()
    # The app sees every one go.
    for _ in range(600):
        if json.loads(await http(port, "GET", "/held")) == {"ws": 0, "sse": 0}:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"still held after the clients left: {await http(port, 'GET', '/held')!r}")
    return connect_time, before, with_them


@pytest.mark.parametrize("kind", ["ws", "sse"])
def test_ten_thousand_idle_connections_on_one_worker(server, kind, capsys):
    connect_time, before, with_them = asyncio.run(hold(server, kind))
    assert len(server.worker_pids()) == 1
    assert "[alert]" not in server.error_log() and "[crit]" not in server.error_log()
    with capsys.disabled():
        what = "WebSockets" if kind == "ws" else "SSE streams"
        print(f"\n{N} idle {what} on one worker: connected in {connect_time:.1f} s; worker RSS "
              f"{before / 1024:.1f} MiB before, {with_them / 1024:.1f} MiB with them open: "
              f"{(with_them - before) / N:.1f} KiB per connection")
