#!/usr/bin/env python3
"""The WebSocket echo load client of bench/asgi.py: N connections, each sending one message and
waiting for its echo before the next (a round trip), for D seconds. Prints one JSON line: the
messages echoed, messages/s, round-trip percentiles, its own CPU seconds per wall second.

    bench/.venv/bin/python bench/ws_load.py --port 8000 [--path /ws] [--connections 64]
        [--duration 5] [--size 64] [--processes 1]

Kept cheap so that the server, not the client, is measured: asyncio protocols on uvloop (when
installed), frames built once (the RFC's client mask with a zero key, which leaves the payload as
it is: masking costs nothing), and an echo counted by its length once the first echo of every
connection has been compared byte for byte with what was sent (an echo that differs is an error,
and so is a connection whose bytes at the end are not a whole number of echoes). With
--processes P the connections are split over P processes.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing
import os
import resource
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def client_frame(payload, opcode=0x1):
    n = len(payload)
    assert n < 126
    return bytes([0x80 | opcode, 0x80 | n]) + b"\0\0\0\0" + payload


def server_frame(payload, opcode=0x1):
    return bytes([0x80 | opcode, len(payload)]) + payload


class Conn(asyncio.Protocol):
    def __init__(self, run, host, path):
        self.run = run
        self.key = base64.b64encode(os.urandom(16))
        self.handshake = (b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          % (path.encode(), host.encode(), self.key))
        self.head = b""
        self.open = asyncio.get_running_loop().create_future()
        self.verified = False
        self.pending = b""
        self.got = 0
        self.sent_at = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.handshake)

    def data_received(self, data):
        if not self.open.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.head[:end], self.head[end + 4:]
            accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
            if not head.startswith(b"HTTP/1.1 101") or accept not in head:
                self.open.set_exception(RuntimeError(f"handshake refused: {head[:200]!r}"))
                return
            self.open.set_result(None)
            if rest:
                self.run.error(f"{len(rest)} unexpected bytes after the 101")
            return
        run = self.run
        if not self.verified:
            # The first echo, compared byte for byte.
            self.pending += data
            if len(self.pending) < len(run.reply):
                return
            if self.pending != run.reply:
                run.error(f"echo {self.pending[:80]!r} differs from {run.reply[:80]!r}")
                self.transport.close()
                return
            self.verified = True
            self.pending = b""
            run.verified += 1
            if run.verified == run.connections and not run.go.done():
                run.go.set_result(None)
            return
        self.got += len(data)
        size = len(run.reply)
        while self.got >= size:
            self.got -= size
            now = time.perf_counter()
            if run.timing:
                run.rtts.append(now - self.sent_at)
            if now < run.end:
                self.sent_at = now
                self.transport.write(run.frame)
            elif not self.closed.done():
                self.closed.set_result(None)

    def connection_lost(self, exc):
        if not self.open.done():
            self.open.set_exception(RuntimeError(f"connection lost during the handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)


class Run:
    def __init__(self, connections, size):
        payload = (b"0123456789abcdef" * ((size + 15) // 16))[:size]
        self.frame, self.reply = client_frame(payload), server_frame(payload)
        self.connections = connections
        self.verified = 0
        self.rtts = []
        self.errors = []
        self.timing = False
        self.end = float("inf")
        self.go = None

    def error(self, text):
        if len(self.errors) < 10:
            self.errors.append(text)


async def load(host, port, path, connections, duration, size, warmup):
    loop = asyncio.get_running_loop()
    run = Run(connections, size)
    run.go = loop.create_future()
    conns = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: Conn(run, host, path), host, port)
        conns.append(conn)
    await asyncio.wait_for(asyncio.gather(*(c.open for c in conns)), 30)
    for c in conns:
        c.transport.write(run.frame)
    await asyncio.wait_for(run.go, 30)          # every connection's first echo checked
    if run.errors:
        return run, 0.0, 0.0
    # Warm-up, then the timed window: every connection keeps one message in flight.
    run.end = time.perf_counter() + warmup + duration
    for c in conns:
        c.sent_at = time.perf_counter()
        c.transport.write(run.frame)
    await asyncio.sleep(warmup)
    run.timing = True
    cpu0, t0 = cpu(), time.perf_counter()
    await asyncio.sleep(duration)
    run.timing = False
    wall, used = time.perf_counter() - t0, cpu() - cpu0
    await asyncio.wait([c.closed for c in conns], timeout=10)
    for c in conns:
        if c.got:
            run.error(f"{c.got} bytes that are not a whole echo")
    for c in conns:
        c.transport.write(b"\x88\x82\0\0\0\0\x03\xe8")      # close 1000
        c.transport.close()
    return run, wall, used


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_process(args, connections, out):
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        run, wall, used = runner(load(args.host, args.port, args.path, connections, args.duration, args.size,
                                      args.warmup))
        out.put({"rtts": run.rtts, "wall": wall, "cpu": used, "errors": run.errors})
    except Exception as e:
        out.put({"rtts": [], "wall": 0.0, "cpu": 0.0, "errors": [f"{type(e).__name__}: {e}"]})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/ws")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=64, help="message bytes (< 126)")
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    if not 0 < args.size < 126:
        sys.exit("--size: 1 to 125 bytes")
    out = multiprocessing.Queue()
    split = [args.connections // args.processes + (i < args.connections % args.processes)
             for i in range(args.processes)]
    procs = [multiprocessing.Process(target=one_process, args=(args, n, out)) for n in split if n]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    rtts = sorted(x for r in results for x in r["rtts"])
    wall = max((r["wall"] for r in results), default=0.0)
    errors = [e for r in results for e in r["errors"]]

    def pct(q):
        return rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1000 if rtts else float("nan")

    print(json.dumps({"messages": len(rtts), "rate": len(rtts) / wall if wall else 0.0,
                      "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                      "client_cpu": sum(r["cpu"] for r in results) / wall if wall else 0.0,
                      "errors": errors}))


if __name__ == "__main__":
    main()
