#!/usr/bin/env python3
"""ASGI bench (not a test): nginx + the module's `asgi_app` against uvicorn (uvloop, httptools;
direct and behind nginx), Granian `--interface asgi` and hypercorn, all in one run on this machine.

    bench/setup && bench/.venv/bin/python bench/asgi.py [--duration 5] [--rounds 3]
        [--servers module-uvloop,uvicorn,...] [--workloads hello,ws,...] [--reference BUILD_DIR]

Every server runs `bench/asgi_apps.py:app` with 2 worker processes (the number of cores) and one
event loop per process: the module with `asgi_event_loop uvloop;` and with the default asyncio
(two rows), the peers on uvloop. Before any timing every server is asked every workload and the
answer checked; then rounds of every (workload, server) pair, the server order rotated each round.
HTTP load is wrk's; the WebSocket echo's is bench/ws_load.py (round trips over N connections).
Each cell is the median of the rounds, and each ratio module/peer the median (min-max) of the
rounds' own ratios: on a shared machine a round's drift hits both sides of its ratio alike.
`--reference` adds the server module-ref: module-uvloop's configuration run by another build of
the module (a directory holding its `ngx-wsgi` and module, e.g. an earlier commit's
target/release copied aside), the way to measure a change to the module against the peers' noise.
See bench/README.md, "ASGI".
"""
import argparse
import http.client
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

import run  # the WSGI bench's process helpers
from run import BENCH, CORES, Ctx, cpu_seconds, descendants, expect, expect_json, free_port, nginx_conf, stop_process, wait_tcp

import asgi_apps

ECHO_SIZE = 16384
WS_SIZE = 64


class Workload:
    def __init__(self, name, label, path, method="GET", body=None, content_type=None, check=None, ws=False):
        self.name, self.label, self.path, self.method = name, label, path, method
        self.body, self.content_type, self.check, self.ws = body, content_type, check, ws


# The packages whose versions a run prints.
ASGI_PEERS = ["uvicorn", "uvloop", "httptools", "websockets", "granian", "hypercorn", "fastapi", "pydantic"]

WORKLOADS = {w.name: w for w in [
    Workload("hello", "hello (13 B)", "/hello", check=expect(asgi_apps.HELLO)),
    Workload("json", "JSON", "/json", check=expect_json(json.loads(asgi_apps.JSON_BODY))),
    Workload("fastapi", "FastAPI route, pydantic model in and out (POST JSON)", asgi_apps.FASTAPI_PATH,
             method="POST", body=asgi_apps.FASTAPI_REQUEST, content_type="application/json",
             check=expect_json(asgi_apps.FASTAPI_ANSWER)),
    Workload("echo", "16 KiB POST echo", "/echo", method="POST", body=b"x" * ECHO_SIZE,
             content_type="application/octet-stream"),       # checked with random bytes
    Workload("stream", "1 MiB streamed (16 x 64 KiB)", "/stream",
             check=expect(asgi_apps.CHUNK * asgi_apps.STREAM_CHUNKS)),
    Workload("ws", f"WebSocket echo ({WS_SIZE} B text messages, round trips)", "/ws", ws=True),
]}


# ---------------------------------------------------------------------------------------------
# Servers: 2 processes each, one event loop per process.

class Server(run.Server):
    loop = "uvloop"
    ws_front = False

    def __init__(self, ctx):
        super().__init__(ctx, CORES)


class Module(Server):
    name = "module-uvloop"
    how = "nginx + ngx_http_wsgi_module, `worker_processes 2`, `asgi_event_loop uvloop;`, `asgi_app asgi_apps.py:app`"

    def start(self):
        body = f"""
  wsgi_python_home {self.ctx.venv};
  asgi_event_loop {self.loop};
  server {{
    listen 127.0.0.1:{self.port} reuseport backlog=4096;
    location / {{ asgi_app {BENCH}/asgi_apps.py:app; }}
  }}"""
        conf = self.dir / "nginx.conf"
        module, nginx = self.build()
        conf.write_text(nginx_conf(self.dir, body, head=f"load_module {module};"))
        self.procs = [self.ctx.popen([nginx, "-p", self.dir, "-c", conf], self.dir / "logs/stdout.log")]

    def build(self):
        """(the module, the nginx it was built for)."""
        return self.ctx.module, self.ctx.nginx


class ModuleRef(Module):
    name = "module-ref"
    how = "module-uvloop's configuration with the build given by --reference"

    @classmethod
    def available(cls, ctx):
        return None if ctx.reference else "needs --reference BUILD_DIR"

    def build(self):
        return self.ctx.reference


class ModuleAsyncio(Module):
    name = "module-asyncio"
    loop = "asyncio"
    how = "the same with `asgi_event_loop asyncio;` (the default)"


class Uvicorn(Server):
    name = "uvicorn"
    command = "uvicorn"
    how = "uvicorn `--workers 2 --loop uvloop --http httptools --ws websockets`"

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "uvicorn", "--app-dir", BENCH, "--host", "127.0.0.1", "--port", self.port,
             "--workers", CORES, "--loop", "uvloop", "--http", "httptools", "--ws", "websockets",
             "--backlog", 4096, "--timeout-keep-alive", 60, "--log-level", "warning", "--no-access-log",
             "asgi_apps:app"], self.dir / "logs/uvicorn.log")]


class UvicornNginx(Uvicorn):
    name = "uvicorn+nginx"
    front = "proxy_pass"
    how = ("the same uvicorn behind nginx (`worker_processes 2`) `proxy_pass` with keep-alive upstream "
           "connections, WebSocket upgrades passed on")

    def front_block(self, port):
        return f"""
  upstream uvicorn_{self.port} {{ server 127.0.0.1:{self.port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{
      proxy_pass http://uvicorn_{self.port};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_max_temp_file_size 0;
    }}
  }}"""


class Granian(Server):
    name = "granian"
    command = "granian"
    how = "Granian `--interface asgi --workers 2 --runtime-threads 1 --loop uvloop --http 1`"

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", self.port,
             "--workers", CORES, "--runtime-threads", 1, "--loop", "uvloop", "--http", "1",
             "--backlog", 4096, "--log-level", "warning", "--working-dir", BENCH, "asgi_apps:app"],
            self.dir / "logs/granian.log")]


class Hypercorn(Server):
    name = "hypercorn"
    command = "hypercorn"
    how = "hypercorn `--workers 2 --worker-class uvloop`"

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "hypercorn", "--workers", CORES, "--worker-class", "uvloop",
             "--bind", f"127.0.0.1:{self.port}", "--backlog", 4096, "--keep-alive", 60,
             "--log-level", "warning", "asgi_apps:app"], self.dir / "logs/hypercorn.log", cwd=BENCH)]


SERVERS = {s.name: s for s in [Module, ModuleRef, ModuleAsyncio, Uvicorn, UvicornNginx, Granian, Hypercorn]}
MODULES = ("module-uvloop", "module-asyncio")


class Front:
    """The nginx in front of uvicorn+nginx (stock nginx, no module, 2 workers)."""

    def __init__(self, ctx, fronted):
        self.dir = ctx.dir("front")
        self.ports = {}
        blocks = []
        for inst in fronted:
            self.ports[inst] = free_port()
            blocks.append(inst.front_block(self.ports[inst]))
        body = "  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }\n" + "".join(blocks)
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_conf(self.dir, body))
        self.proc = ctx.popen([ctx.nginx, "-p", self.dir, "-c", conf], self.dir / "logs/stdout.log")
        self.port = next(iter(self.ports.values()), None)

    def pids(self):
        return descendants([self.proc.pid])


# ---------------------------------------------------------------------------------------------
# Measuring

def request(port, w, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": w.content_type} if w.content_type else {}
        conn.request(w.method, w.path, body=body if body is not None else w.body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def ws_load(port, duration, connections, warmup=0.5):
    out = subprocess.run([sys.executable, BENCH / "ws_load.py", "--port", str(port), "--path", "/ws",
                          "--connections", str(connections), "--duration", str(duration),
                          "--warmup", str(warmup), "--size", str(WS_SIZE)],
                         capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"ws_load failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def verify(key, port, w):
    """Raises unless the server answers the workload correctly (retrying while it boots)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if w.ws:
                r = ws_load(port, 0.2, 2, warmup=0)
                error = "; ".join(r["errors"]) or (None if r["messages"] else "no echo")
            else:
                sent = os.urandom(ECHO_SIZE) if w.name == "echo" else None
                status, body = request(port, w, sent)
                error = (None if body == sent else f"echo returned {len(body)} B, not the {len(sent)} B sent") \
                    if sent else w.check(body)
                if status != 200:
                    error = f"status {status}: {body[:200]!r}"
        except (OSError, http.client.HTTPException, RuntimeError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        if error is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key} answers {w.name} wrongly: {error}")
        time.sleep(0.5)


class Cell:
    def __init__(self):
        self.rate, self.p99, self.cpu_share, self.cpu_per, self.client, self.errors = [], [], [], [], [], []

    def med(self, what):
        values = [v for v in getattr(self, what) if v == v]
        return statistics.median(values) if values else float("nan")


def measure(args, key, w, port, pids, cell):
    procs = pids()
    before, t0 = cpu_seconds(procs), time.monotonic()
    if w.ws:
        r = ws_load(port, args.duration, args.ws_connections)
        rate, p99, errors = r["rate"], r["p99_ms"], r["errors"]
        cell.client.append(r["client_cpu"])
    else:
        script = args.scripts.get(w.name)
        rate, p99, errors = run.wrk(port, w.path, args.duration, args.connections, script)
    wall = time.monotonic() - t0
    used = cpu_seconds(procs) - before
    cell.rate.append(rate)
    cell.p99.append(p99)
    cell.cpu_share.append(used / wall)
    cell.cpu_per.append(used / (rate * args.duration) * 1e6 if rate else float("nan"))
    cell.errors += errors
    print(f"round {w.name:8} {key:15} {rate:9.0f}/s  p99 {p99:7.2f} ms  cpu {used / wall:.2f}"
          + (f"  client {cell.client[-1]:.2f}" if w.ws else ""), file=sys.stderr)


def lua_scripts(ctx):
    out = {}
    for w in WORKLOADS.values():
        if w.method == "POST":
            f = ctx.tmp / f"{w.name}.lua"
            body = w.body.decode().replace("\\", "\\\\").replace('"', '\\"')
            f.write_text(f'wrk.method = "POST"\nwrk.body = "{body}"\n'
                         f'wrk.headers["Content-Type"] = "{w.content_type}"\n')
            out[w.name] = f
    return out


def bench(ctx, args, names, workloads):
    instances = {n: SERVERS[n](ctx) for n in names}
    front, started = None, []
    try:
        for inst in instances.values():
            inst.start()
            started.append(inst)
        fronted = [i for i in instances.values() if i.front]
        if fronted:
            front = Front(ctx, fronted)
            wait_tcp(front.port, [front.proc], "front nginx")
        for inst in instances.values():
            try:
                inst.wait_ready()
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n{inst.log_tail()}")
        port = {n: front.ports[i] if i.front else i.port for n, i in instances.items()}
        pids = {n: ((lambda i=i: i.pids() + front.pids()) if i.front else i.pids) for n, i in instances.items()}
        for n, inst in instances.items():
            for w in workloads:
                try:
                    verify(n, port[n], WORKLOADS[w])
                except RuntimeError as e:
                    raise RuntimeError(f"{e}\n{inst.log_tail()}")
        print(f"verified: {len(instances)} servers answer {len(workloads)} workloads correctly", file=sys.stderr)
        args.scripts = lua_scripts(ctx)
        cells = {(n, w): Cell() for n in names for w in workloads}
        for w in workloads:                               # warm-up
            for n in names:
                if WORKLOADS[w].ws:
                    ws_load(port[n], 1, args.ws_connections)
                else:
                    run.wrk(port[n], WORKLOADS[w].path, 1, args.connections, args.scripts.get(w))
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for w in workloads:
                for n in order:
                    measure(args, n, WORKLOADS[w], port[n], pids[n], cells[(n, w)])
        return cells
    finally:
        if front:
            stop_process(front.proc, signal.SIGQUIT)
        for inst in started:
            inst.stop()


def fmt(v):
    return "-" if v != v else (f"{v:.1f}" if v >= 1 else f"{v:.2f}")


def spread(values):
    values = [v for v in values if v == v]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(ctx, args, cells, names, workloads):
    print(f"\n{CORES} cores; {CORES} processes per server; wrk -t2 -c{args.connections} -d{args.duration}s; "
          f"WebSocket: bench/ws_load.py, {args.ws_connections} connections, {args.duration}s; "
          f"{args.rounds} interleaved rounds; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{run.versions(ctx, names, ASGI_PEERS)}\n")
    modules = [m for m in MODULES if m in names]
    for w in workloads:
        wl = WORKLOADS[w]
        unit = "msg/s" if wl.ws else "req/s"
        print(f"#### {wl.label}\n")
        head = f"| server | {unit} | p99 ms | server CPU | CPU us per {'message' if wl.ws else 'request'} |"
        head += " client CPU |" if wl.ws else ""
        head += "".join(f" {m} / server |" for m in modules)
        print(head)
        print("|---" * (head.count("|") - 1) + "|")
        for n in names:
            c = cells[(n, w)]
            row = f"| {n} | {c.med('rate'):.0f}{' (errors)' if c.errors else ''} | {fmt(c.med('p99'))} | " \
                  f"{c.med('cpu_share'):.2f} | {fmt(c.med('cpu_per'))} |"
            if wl.ws:
                row += f" {c.med('client'):.2f} |"
            for m in modules:
                row += " - |" if m == n else \
                    f" {spread([a / b for a, b in zip(cells[(m, w)].rate, c.rate) if b])} |"
            print(row)
        print()
    peers = [n for n in names if n not in MODULES]
    for m in modules:
        if not peers:
            break
        print(f"#### {m} ÷ each peer (req/s or msg/s; median (min-max) of the rounds' ratios)\n")
        print("| workload | " + " | ".join(peers) + " |")
        print("|---|" + "---|" * len(peers))
        for w in workloads:
            cols = [spread([a / b for a, b in zip(cells[(m, w)].rate, cells[(p, w)].rate) if b]) for p in peers]
            print(f"| {w} | " + " | ".join(cols) + " |")
        print()
        print(f"#### each peer's server CPU per request (or message) ÷ {m}'s (above 1: {m} spends less)\n")
        print("| workload | " + " | ".join(peers) + " |")
        print("|---|" + "---|" * len(peers))
        for w in workloads:
            cols = [spread([b / a for a, b in zip(cells[(m, w)].cpu_per, cells[(p, w)].cpu_per) if a]) for p in peers]
            print(f"| {w} | " + " | ".join(cols) + " |")
        print()
    print("server CPU: the CPU seconds of the server's processes per wall second (2.00 = both cores), "
          "the fronting nginx included for uvicorn+nginx; client CPU: bench/ws_load.py's.")
    for n in names:
        print(f"- {n}: {SERVERS[n].how}")
    for (n, w), c in cells.items():
        if c.errors:
            print(f"- errors in {n}/{w}: {'; '.join(sorted(set(c.errors)))}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk / ws_load run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    ap.add_argument("--ws-connections", type=int, default=64, help="WebSocket connections (default 64)")
    ap.add_argument("--servers", default=",".join(n for n in SERVERS if n != "module-ref"), help=f"comma list of: {', '.join(SERVERS)}")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of: {', '.join(WORKLOADS)}")
    ap.add_argument("--reference", metavar="BUILD_DIR",
                    help="another build of the module (its ngx-wsgi and module): adds the server module-ref")
    args = ap.parse_args()
    names = [s for s in args.servers.split(",") if s]
    if args.reference and "module-ref" not in names:
        names.append("module-ref")
    workloads = [w for w in args.workloads.split(",") if w]
    for n in names:
        if n not in SERVERS:
            sys.exit(f"unknown server {n}; known: {', '.join(SERVERS)}")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}; known: {', '.join(WORKLOADS)}")
    with Ctx(args) as ctx:
        ctx.reference = run.paths(pathlib.Path(args.reference)) if args.reference else None
        for n in names:
            why = SERVERS[n].available(ctx)
            if why:
                sys.exit(f"{n}: {why}")
        cells = bench(ctx, args, names, workloads)
        report(ctx, args, cells, names, workloads)


if __name__ == "__main__":
    main()
