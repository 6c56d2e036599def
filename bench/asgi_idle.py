#!/usr/bin/env python3
"""Bench (not a test): 10,000 idle WebSockets, then 10,000 idle server-sent-event streams, on ONE
worker process of each server: nginx + the module (`asgi_app`), uvicorn (uvloop, httptools,
websockets) and Granian (`--interface asgi`), all running `bench/asgi_apps.py:app`.

    bench/setup && bench/.venv/bin/python bench/asgi_idle.py [--connections 10000]
        [--servers module,uvicorn,granian] [--kinds ws,sse]

Per server and kind: the worker's RSS before (after a warm-up) and with every connection open,
the growth per connection, how long all took to connect (512 handshakes in flight at once, the
clients spread over the source addresses 127.0.0.2-5), the latency of a short request (`GET
/hello`, a new connection) while they are open, and a broadcast: one message to every
connection, each of which must get it (the time until the last one got it). The two kinds run one
after the other, each on a fresh server: a process here may hold at most 20,000 file descriptors
(the hard RLIMIT_NOFILE), fewer than both kinds at once need. See bench/README.md, "ASGI".
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time

import run  # the WSGI bench's process helpers
from run import BENCH, Ctx, nginx_conf

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
CONNECTING_AT_ONCE = 512
SOURCES = 4


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except OSError:
        return None


class Module(run.Server):
    name = "module"
    how = "nginx + ngx_http_wsgi_module, `worker_processes 1`, `asgi_event_loop uvloop;`"

    def start(self):
        n = self.ctx.args.connections
        body = f"""
  wsgi_python_home {self.ctx.venv};
  asgi_event_loop uvloop;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{ asgi_app {BENCH}/asgi_apps.py:app; }}
  }}"""
        head = f"load_module {self.ctx.module};\nworker_rlimit_nofile {self.ctx.nofile};"
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_conf(self.dir, body, workers=1, head=head, connections=n + 1024))
        self.procs = [self.ctx.popen([self.ctx.nginx, "-p", self.dir, "-c", conf], self.dir / "logs/stdout.log")]

    def worker(self):
        kids = [p for p in self.pids() if p != self.procs[0].pid]
        return kids[0] if kids else None


class Uvicorn(run.Server):
    name = "uvicorn"
    command = "uvicorn"
    how = ("uvicorn `--workers 1 --loop uvloop --http httptools --ws websockets --ws-ping-interval 3600` "
           "(its pings, every 20 s by default, would leave the bench's idle clients out of step)")

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "uvicorn", "--app-dir", BENCH, "--host", "127.0.0.1", "--port", self.port,
             "--loop", "uvloop", "--http", "httptools", "--ws", "websockets", "--ws-ping-interval", 3600,
             "--backlog", 4096, "--log-level", "warning", "--no-access-log", "asgi_apps:app"],
            self.dir / "logs/uvicorn.log")]

    def worker(self):
        return self.procs[0].pid


class Granian(run.Server):
    name = "granian"
    command = "granian"
    how = ("Granian `--interface asgi --workers 1 --runtime-threads 1 --loop uvloop --http 1 --backpressure N+1024` "
           "(its default backpressure, the backlog, holds later requests back while that many run)")

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", self.port,
             "--workers", 1, "--runtime-threads", 1, "--loop", "uvloop", "--http", "1", "--backlog", 4096,
             "--backpressure", self.ctx.args.connections + 1024,
             "--log-level", "warning", "--working-dir", BENCH, "asgi_apps:app"], self.dir / "logs/granian.log")]

    def worker(self):
        kids = [p for p in self.pids() if p != self.procs[0].pid]
        return max(kids, key=lambda p: rss_kib(p) or 0) if kids else None


SERVERS = {s.name: s for s in [Module, Uvicorn, Granian]}


# ---------------------------------------------------------------------------------------------
# The client

async def http(port, method, target):
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 120)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{method} {target}: {data[:300]!r}")
    return body, time.monotonic() - t0


async def ws_frame(reader):
    """The next data frame's payload (control frames skipped)."""
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(n)
        if b0 & 0x0F in (0x1, 0x2):
            return payload


async def open_one(port, i, kind, gate):
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(f"127.0.0.{2 + i % SOURCES}", 0))
        if kind == "ws":
            writer.write(b"GET /ws-idle HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"WebSocket handshake: {head[:200]!r}")
            hello = await asyncio.wait_for(ws_frame(reader), 120)
        else:
            writer.write(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"SSE: {head[:200]!r}")
            hello = await asyncio.wait_for(reader.readuntil(b"data: hello\n\n"), 120)
        if b"hello" not in hello:
            raise RuntimeError(f"{kind}: first message {hello!r}")
        return reader, writer


async def tick(kind, reader):
    if kind == "ws":
        got = await asyncio.wait_for(ws_frame(reader), 120)
        if got != b"tick":
            raise RuntimeError(f"broadcast: {got!r}")
    else:
        await asyncio.wait_for(reader.readuntil(b"data: tick\n\n"), 120)


async def hold(port, worker, kind, n):
    await http(port, "GET", "/hello")
    await asyncio.sleep(0.5)
    before = rss_kib(worker)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    conns = await asyncio.gather(*(open_one(port, i, kind, gate) for i in range(n)))
    connect = loop.time() - t0
    try:
        await asyncio.sleep(1)
        with_them = rss_kib(worker)
        _, short = await http(port, "GET", "/hello")
        t1 = loop.time()
        body, _ = await http(port, "POST", "/broadcast")
        counts = json.loads(body)
        if counts[kind] != n:
            raise RuntimeError(f"broadcast reached {counts}, not {n}")
        await asyncio.gather(*(tick(kind, r) for r, _ in conns))
        spread = loop.time() - t1
    finally:
        for _, w in conns:
            w.close()
    await asyncio.sleep(2)
    return {"connect": connect, "before": before, "with": with_them, "short": short, "broadcast": spread}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--kinds", default="ws,sse")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < args.connections + 512:
        sys.exit(f"the hard RLIMIT_NOFILE is {hard}: {args.connections} connections need {args.connections + 512}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))       # the servers inherit it
    names = [s for s in args.servers.split(",") if s]
    kinds = [k for k in args.kinds.split(",") if k]
    results = []
    with Ctx(args) as ctx:
        ctx.nofile = hard if hard != resource.RLIM_INFINITY else 4 * args.connections
        for name in names:
            cls = SERVERS[name]
            why = cls.available(ctx)
            if why:
                sys.exit(f"{name}: {why}")
            for kind in kinds:
                # A fresh server for each kind: memory freed (and kept) after one batch would hide
                # what the next one costs.
                inst = cls(ctx, 1)
                inst.start()
                try:
                    inst.wait_ready()
                    r = asyncio.run(hold(inst.port, inst.worker(), kind, args.connections))
                    r.update(server=name, kind=kind)
                    results.append(r)
                    print(f"{name} {kind}: {r}", file=sys.stderr)
                except (RuntimeError, OSError, asyncio.TimeoutError) as e:
                    raise RuntimeError(f"{name} {kind}: {type(e).__name__} {e}\n{inst.log_tail()}")
                finally:
                    inst.stop()
    n = args.connections
    print(f"\n{n} idle connections of each kind on one worker process; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| server | kind | connected in s | worker RSS MiB before / with them | KiB per connection "
          "| short request meanwhile, ms | broadcast to all, s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['server']} | {r['kind']} | {r['connect']:.1f} | {r['before'] / 1024:.1f} / {r['with'] / 1024:.1f} "
              f"| {(r['with'] - r['before']) / n:.1f} | {r['short'] * 1000:.1f} | {r['broadcast']:.2f} |")
    print()
    for name in names:
        print(f"- {name}: {SERVERS[name].how}")


if __name__ == "__main__":
    main()
