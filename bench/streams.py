#!/usr/bin/env python3
"""Bench (not a test): long-lived streaming responses beside short requests. Every server runs ONE
worker process in its default (or documented-typical) configuration; all are measured in one run.

    bench/setup && bench/.venv/bin/python bench/streams.py [--streams 1000] [--rate 100]
        [--hold 20] [--recovery 30] [--wait sleep|queue] [--servers module,granian,...]
        [--threads NAME=N,...]

Per server, one after the other: a flow of short requests (`GET /hello`, a new connection each,
sent on a fixed schedule of --rate a second, whatever the answers do) runs all along; after a
warm-up and a baseline, --streams clients open `GET /events` at the same moment (the app yields a
line at once, then one a second, blocked in between in time.sleep or queue.get), hold them for
--hold seconds and all leave together; the short flow goes on for --recovery seconds more.

Reported per server: how many streams got their first line within 1 s of sending the request
(and the distribution), the short requests' latency before and during the streams, errors and
timeouts, the worker's RSS and threads before and with the streams open, RSS growth per stream
being served, and how long after the clients left the short requests were served as before.
See bench/README.md, "Long-lived streams".
"""
import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import pathlib
import re
import resource
import selectors
import signal
import socket
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import apps  # noqa: E402
import run  # noqa: E402  (the bench's process helpers and server classes)
from run import BENCH, Ctx, cpu_seconds, descendants, free_port, nginx_conf, stop_process, wait_tcp  # noqa: E402

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
WARM_UP = 2.0            # seconds of short requests before the baseline counts
FIRST_LINE_LIMIT = 1.0   # the bar: every stream's first line within 1 s
STEADY_AFTER = 2.0       # the short requests' "steady" latency leaves out the streams' opening
LIVE_WINDOW = 1.5        # a stream that got a line this close to the disconnect was being served
RECOVERY_WINDOW = 2.0    # back to normal: the first stretch this long with no slow short request
FAST_FLOOR = 0.050       # slow: over max(50 ms, 2 x the server's baseline p99)


# ---------------------------------------------------------------------------------------------
# Servers: one worker process each. `n` is the thread setting, None for the server's default.

class Limits:
    """File descriptors and connections sized for the streams (set in main)."""
    streams = 1000

    @classmethod
    def connections(cls):
        # Per stream: the client's connection, and for proxied peers the upstream one.
        return 2 * cls.streams + 2048

    @classmethod
    def nofile(cls):
        return 2 * cls.connections() + 1024


class Backlog:
    """For a proxied peer: its nginx's `listen` from run.py, with a backlog that holds every
    stream's connect at once (nginx's own default is 511)."""

    def front_block(self, port):
        return re.sub(r"(listen 127\.0\.0\.1:\d+ reuseport);", r"\1 backlog=4096;", super().front_block(port))


class Module(run.Server):
    name = "module"
    default = None

    def how(self):
        threads = (f"`wsgi_max_threads {self.n}`" if self.n else
                   "the module's defaults: its own threads, made on demand up to `wsgi_max_threads` 1024, "
                   "`wsgi_max_queue` 1024, `wsgi_queue_timeout` 10s (no `thread_pool`)")
        return f"nginx + ngx_http_wsgi_module, 1 worker, {threads}"

    def start(self):
        limit = f"wsgi_max_threads {self.n};" if self.n else ""
        body = f"""
  wsgi_python_home {self.ctx.venv};
  {limit}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{ wsgi_app {BENCH}/apps.py:dispatch; }}
  }}"""
        head = f"load_module {self.ctx.module};\nworker_rlimit_nofile {Limits.nofile()};"
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_conf(self.dir, body, workers=1, head=head, connections=Limits.connections()))
        self.procs = [self.ctx.popen([self.ctx.nginx, "-p", self.dir, "-c", conf], self.dir / "logs/stdout.log")]


class Granian(run.Granian):
    default = None

    def how(self):
        threads = (f"`--blocking-threads {self.n}`" if self.n else
                   "its default blocking threads (WSGI: backpressure / 2 = 512, with the default "
                   "`--backlog` 1024 and backpressure = backlog)")
        return f"Granian `--interface wsgi --workers 1`, {threads}"

    def start(self):
        threads = ["--blocking-threads", self.n] if self.n else []
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", self.port,
             "--workers", 1, *threads, "--log-level", "warning", "--working-dir", BENCH, "apps:dispatch"],
            self.dir / "logs/granian.log")]


class UWSGI(Backlog, run.UWSGI):
    default = 8

    def how(self):
        return (f"uWSGI `--master --processes 1 --threads {self.n} --listen 4096` behind nginx `uwsgi_pass` "
                "(1 worker, unbuffered for the stream: `X-Accel-Buffering: no`)")

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "uwsgi", "--master", "--processes", 1, "--threads", self.n, "--socket", self.sock,
             "--listen", 4096, "--chdir", BENCH, "--pythonpath", BENCH, "--home", self.ctx.venv,
             "--module", "apps:dispatch", "--need-app", "--single-interpreter", "--die-on-term",
             "--disable-logging", "--buffer-size", 32768], self.dir / "logs/uwsgi.log")]


class Gunicorn(Backlog, run.Gunicorn):
    default = 8

    def how(self):
        return (f"gunicorn `-k gthread -w 1 --threads {self.n} --worker-connections {Limits.connections()}` "
                "behind nginx `proxy_pass` (unbuffered for the stream: `X-Accel-Buffering: no`)")

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "gunicorn", "--chdir", BENCH, "-k", "gthread", "-w", 1, "--threads", self.n,
             "--worker-connections", Limits.connections(), "-b", f"127.0.0.1:{self.port}", "--backlog", 2048,
             "--log-level", "warning", "--keep-alive", 60, "apps:dispatch"], self.dir / "logs/gunicorn.log")]


class Cheroot(run.Cheroot):
    default = 10

    def how(self):
        return f"cheroot `wsgi.Server(numthreads={self.n})` (its default is 10), 1 process (bench/cheroot_server.py)"

    def start(self):
        self.procs = [self.ctx.popen(
            [sys.executable, BENCH / "cheroot_server.py", "--port", self.port, "--processes", 1,
             "--threads", self.n], self.dir / "logs/cheroot.log")]


SERVERS = {s.name: s for s in [Module, Granian, UWSGI, Gunicorn, Cheroot]}
WHAT_N = {"module": "wsgi_max_threads", "granian": "--blocking-threads", "uwsgi": "--threads",
          "gunicorn": "--threads", "cheroot": "numthreads"}


class Front:
    """The nginx in front of a proxied peer: one worker, as the peer has."""

    def __init__(self, ctx, inst):
        self.dir = ctx.dir(f"front-{inst.name}")
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_conf(self.dir, inst.front_block(self.port), workers=1,
                                   head=f"worker_rlimit_nofile {Limits.nofile()};",
                                   connections=Limits.connections()))
        self.proc = ctx.popen([ctx.nginx, "-p", self.dir, "-c", conf], self.dir / "logs/stdout.log")


# ---------------------------------------------------------------------------------------------
# The clients: each in its own process, so that reading a thousand streams never delays the
# timing of a short request.

FIRST_LINE = re.compile(rb"data: 0 ([\d.]+)\n")
SHORT_REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def short_flow(port, rate, t_start, t_end, timeout):
    """Open loop: request i is due at t_start + i / rate and its latency counts from then, so a
    client that falls behind does not hide a slow server. -> [(due, latency or None, outcome)]"""
    out = []

    async def one(due):
        async def exchange():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(SHORT_REQUEST)
                return await reader.read(-1)
            finally:
                writer.close()
        try:
            data = await asyncio.wait_for(exchange(), timeout - max(0.0, time.monotonic() - due))
        except asyncio.TimeoutError:
            out.append((due, None, "timeout"))
            return
        except OSError as e:
            out.append((due, None, type(e).__name__))
            return
        latency = time.monotonic() - due
        status = data.split(b" ", 2)[1:2]
        if status != [b"200"]:
            out.append((due, None, f"status {status[0].decode(errors='replace')}" if status else "empty answer"))
        elif not data.endswith(apps.HELLO):
            out.append((due, None, "wrong body"))
        else:
            out.append((due, latency, "ok"))

    tasks = []
    i = 0
    while True:
        due = t_start + i / rate
        if due >= t_end:
            break
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(due)))
        i += 1
    await asyncio.gather(*tasks)
    return out


class Stream:
    """One stream client: its socket and what it saw."""

    def __init__(self):
        self.sock = None
        self.sent = 0.0           # when it began to connect
        self.first = None         # when its first line was read
        self.last = None          # when its last line was read
        self.lines = 0
        self.error = ""
        self.made = None          # the app's clock in the first line
        self.head = b""           # the response until its header ends, then the body until `made`
        self.in_body = False
        self.tail = b""

    def connect(self, port, request):
        self.sent = time.monotonic()
        try:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.sock.sendall(request)
            self.sock.setblocking(False)
        except OSError as e:
            self.error = type(e).__name__
            self.close()

    def readable(self):
        """Reads what arrived; False once the stream is over."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError as e:
            self.error = type(e).__name__
            return False
        if not data:
            self.error = "closed by the server"
            return False
        now = time.monotonic()
        if not self.in_body:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return True
            head, _, data = self.head.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)[1:2]
            if status != [b"200"]:
                self.error = f"status {status[0].decode(errors='replace') if status else 'none'}"
                return False
            self.in_body, self.head = True, b""
        if self.made is None:
            self.head += data
            made = FIRST_LINE.search(self.head)
            if made:
                self.made, self.head = float(made.group(1)), b""
        seen = self.tail + data
        lines = seen.count(b"data: ")
        if lines:
            self.first = self.first or now
            self.last = now
            self.lines += lines
        self.tail = seen[-5:]        # shorter than the marker: one split across reads counts once
        return True

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def record(self):
        return (self.sent, self.first, self.last, self.lines, self.error, self.made)


def stream_clients(port, count, path, t_open, t_close):
    """Opens `count` streams at t_open, reads their lines, closes them all at t_close.
    -> ([(began to connect, first line read, last line read, lines, error, first line made)], when
    the last one was closed); "made" is the app's clock in the line.

    Plain sockets and epoll rather than asyncio: each connect and request goes out in one tight
    loop (a thousand in tens of milliseconds), so the streams really open at once and the
    client's own pace hardly shows in the first-line times."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    streams = [Stream() for _ in range(count)]
    sel = selectors.DefaultSelector()

    def poll(timeout):
        for key, _ in sel.select(timeout):
            st = key.data
            if not st.readable():
                sel.unregister(st.sock)
                st.close()

    time.sleep(max(0.0, t_open - time.monotonic()))
    for i, st in enumerate(streams):
        st.connect(port, request)
        if st.sock is not None:
            sel.register(st.sock, selectors.EVENT_READ, st)
        if i % 50 == 49:
            poll(0)              # the first streams' lines are read while the rest connect
    while True:
        left = t_close - time.monotonic()
        if left <= 0:
            break
        poll(min(left, 0.1))
    for st in streams:
        if st.sock is not None:
            sel.unregister(st.sock)
            st.close()
    closed = time.monotonic()
    sel.close()
    return [st.record() for st in streams], closed


def in_process(pipe, fn, *args):
    try:
        result = fn(*args)
        pipe.send(asyncio.run(result) if asyncio.iscoroutine(result) else result)
    except BaseException as e:      # the parent must hear of it rather than wait for ever
        pipe.send(e)
    finally:
        pipe.close()


def spawn(fn, *args):
    parent, child = multiprocessing.Pipe(duplex=False)
    p = multiprocessing.get_context("fork").Process(target=in_process, args=(child, fn, *args), daemon=True)
    p.start()
    child.close()
    return p, parent


def collect(proc, pipe):
    result = pipe.recv()
    proc.join()
    if isinstance(result, BaseException):
        raise RuntimeError(f"client failed: {result!r}")
    return result


# ---------------------------------------------------------------------------------------------
# Measuring one server

def worker_pid(root):
    """The process that runs the app: the launched process's only child (nginx's, gunicorn's and
    uWSGI's master keeps one worker; Granian and the cheroot launcher start one)."""
    kids = [p for p in descendants([root]) if p != root]
    if not kids:
        return root
    return max(kids, key=lambda p: rss_kib(p) or 0)


def rss_kib(pid):
    try:
        return int(pathlib.Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    except (OSError, IndexError):
        return None


def threads_of(pid):
    try:
        return int(re.search(r"^Threads:\s+(\d+)", pathlib.Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
    except (OSError, AttributeError):
        return None


def percentile(values, q):
    """values sorted (infinity: a request that got no answer)."""
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def latencies(results, lo, hi):
    """Sorted latencies of the short requests due in [lo, hi), failures as infinity."""
    return sorted(lat if lat is not None else float("inf") for due, lat, _ in results if lo <= due < hi)


def recovery_after(results, closed, threshold):
    """(seconds, slow): from the disconnect to the start of the first RECOVERY_WINDOW seconds in
    which every short request was answered correctly within threshold (0 if none was slow; None:
    no such stretch before the flow ended), and how many after the disconnect were not. A backlog left by the
    streams shows as one run of slow requests right after the disconnect; the machine's own
    noise, as lone ones later, which a whole clean stretch before them lets through."""
    after = sorted(r for r in results if r[0] >= closed)
    bad = [due for due, lat, _ in after if lat is None or lat > threshold]
    if not bad:
        return 0.0, 0
    start = closed
    for due in bad:
        if due - start >= RECOVERY_WINDOW:
            break
        start = due + 1e-6      # a clean stretch begins after the last slow one
    if start + RECOVERY_WINDOW > after[-1][0]:
        return None, len(bad)
    return start - closed, len(bad)


def measure(ctx, args, cls, n):
    inst = cls(ctx, n)
    front = None
    try:
        inst.start()
        if inst.front:
            front = Front(ctx, inst)
            wait_tcp(front.port, [front.proc], "front nginx")
        inst.wait_ready()
        port = front.port if front else inst.port
        check(inst, port)
        pids = lambda: inst.pids() + (descendants([front.proc.pid]) if front else [])    # noqa: E731
        worker = worker_pid(inst.procs[0].pid)
        load_before = os.getloadavg()[0]

        now = time.monotonic()
        t0 = now + 0.5
        t_open = t0 + WARM_UP + args.baseline
        t_close = t_open + args.hold
        t_end = t_close + args.recovery
        path = f"/events?wait={args.wait}"
        shorts = spawn(short_flow, port, args.rate, t0, t_end, args.timeout)
        streams = spawn(stream_clients, port, args.streams, path, t_open, t_close)
        samples = []          # (time, worker RSS KiB, worker threads, RSS KiB of all the server's processes)
        cpu_at = {}
        while time.monotonic() < t_end:
            t = time.monotonic()
            all_pids = pids()
            samples.append((t, rss_kib(worker), threads_of(worker), sum(rss_kib(p) or 0 for p in all_pids)))
            for mark in (t_open, t_close):
                if mark not in cpu_at and t >= mark:
                    cpu_at[mark] = (cpu_seconds(all_pids), t)
            time.sleep(0.25)
        records, closed = collect(*streams)
        results = collect(*shorts)
        load_after = os.getloadavg()[0]
        if args.raw:
            dump = {"t_open": t_open, "t_close": t_close, "closed": closed, "streams": records,
                    "short": results, "samples": samples}
            (pathlib.Path(args.raw) / f"{inst.name}.json").write_text(json.dumps(dump))
        alive = inst.procs[0].poll() is None and rss_kib(worker) is not None
        return summarize(args, inst, records, closed, results, samples, cpu_at, t0, t_open, t_close,
                         (load_before, load_after), alive)
    finally:
        if front:
            stop_process(front.proc, signal.SIGQUIT, timeout=10)
        inst.stop()


def check(inst, port):
    """A short request and a two-line stream must come back right before anything is timed."""
    deadline = time.monotonic() + 30
    while True:
        try:
            status, body = run.request(port, run.WORKLOADS["hello"])
            error = None if status == 200 and body == apps.HELLO else f"hello: {status} {body[:80]!r}"
            if error is None:
                status, body = run.request(port, run.Workload("events", "", "/events?lines=2&interval=0"))
                error = (None if status == 200 and re.fullmatch(rb"data: 0 [\d.]+\n\ndata: 1 [\d.]+\n\n", body)
                         else f"events: {status} {body[:80]!r}")
        except (OSError, http.client.HTTPException) as e:
            error = f"{type(e).__name__}: {e}"
        if error is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{inst.name} answers wrongly: {error}\n{inst.log_tail()}")
        time.sleep(0.5)


def median_in(samples, lo, hi, field):
    values = [s[field] for s in samples if lo <= s[0] < hi and s[field] is not None]
    return statistics.median(values) if values else None


def summarize(args, inst, records, closed, results, samples, cpu_at, t0, t_open, t_close, load, alive):
    firsts = sorted(r[1] - r[0] for r in records if r[1] is not None)
    made = sorted(r[5] - r[0] for r in records if r[5] is not None)
    errors = {}
    for r in records:
        if r[4] and r[1] is None:
            errors[r[4]] = errors.get(r[4], 0) + 1
    live = sum(1 for r in records if r[2] is not None and r[2] >= t_close - LIVE_WINDOW)
    base = latencies(results, t0 + WARM_UP, t_open)
    during = latencies(results, t_open, t_close)
    steady = latencies(results, t_open + STEADY_AFTER, t_close)
    outcomes = {}
    for due, lat, outcome in results:
        if t_open <= due < t_close and outcome != "ok":
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    base_p99 = percentile(base, 0.99)
    threshold = max(FAST_FLOOR, 2 * base_p99) if base_p99 not in (None, float("inf")) else FAST_FLOOR
    rss_before = median_in(samples, t_open - 2, t_open, 1)
    rss_with = median_in(samples, t_close - 2, t_close, 1)
    total_before = median_in(samples, t_open - 2, t_open, 3)
    total_with = median_in(samples, t_close - 2, t_close, 3)
    cpu = None
    if t_open in cpu_at and t_close in cpu_at:
        (c0, w0), (c1, w1) = cpu_at[t_open], cpu_at[t_close]
        cpu = (c1 - c0) / (w1 - w0)
    return {
        "name": inst.name, "how": inst.how(), "n": inst.n,
        "streams": len(records), "within": sum(1 for f in firsts if f <= FIRST_LINE_LIMIT),
        "with_line": len(firsts), "firsts": firsts, "made": made, "stream_errors": errors, "live": live,
        "lines": sum(r[3] for r in records),
        "base": base, "during": during, "steady": steady, "outcomes": outcomes,
        "rss_before": rss_before, "rss_with": rss_with, "total_before": total_before, "total_with": total_with,
        "threads_before": median_in(samples, t_open - 2, t_open, 2),
        "threads_with": median_in(samples, t_close - 2, t_close, 2),
        "threads_end": samples[-1][2] if samples else None, "rss_end": samples[-1][1] if samples else None,
        "recovery": recovery_after(results, closed, threshold), "threshold": threshold, "cpu": cpu,
        "load": load, "alive": alive,
    }


# ---------------------------------------------------------------------------------------------
# Report

def ms(v):
    if v is None:
        return "-"
    if v == float("inf"):
        return "no answer"
    return f"{v * 1000:.1f}" if v < 10 else f"{v * 1000:.0f}"


def sec(v):
    return "-" if v is None else f"{v:.2f}"


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def report(args, rows, ctx, names):
    print(f"\n1 worker process per server; {args.streams} streams (`/events?wait={args.wait}`: a line at once, "
          f"then one a second), opened at once, held {args.hold} s; short requests `GET /hello` at "
          f"{args.rate:g}/s (a new connection each, {args.timeout:g} s timeout) from {WARM_UP + args.baseline:g} s "
          f"before the streams to {args.recovery} s after they left; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores")
    print(f"{run.versions(ctx, names)}")
    print("load average (1 min) when each server started and ended: "
          + ", ".join(f"{r['name']} {r['load'][0]:.1f}/{r['load'][1]:.1f}" for r in rows) + "\n")

    print("#### Streams\n")
    print("| server | first line within 1 s | got a line | first line read, s: p50 / p90 / p99 / max "
          "| made by the app, s: p50 / p99 / max | served at the end | lines received | stream errors |")
    print("|---|---|---|---|---|---|---|---|")

    def dist(values, qs):
        return " / ".join([sec(percentile(values, q)) for q in qs] + [sec(values[-1] if values else None)])
    for r in rows:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r["stream_errors"].items())) or "-"
        print(f"| {r['name']} | {r['within']} of {r['streams']} | {r['with_line']} "
              f"| {dist(r['firsts'], (0.5, 0.9, 0.99))} | {dist(r['made'], (0.5, 0.99))} | {r['live']} "
              f"| {r['lines']} | {errs} |")

    print("\n#### Short requests (latency from when each was due; no answer counts as slowest)\n")
    print("| server | before: p50 / p99 ms | with the streams: p50 / p99 ms "
          f"| p99 from {STEADY_AFTER:g} s after they opened | answered | failed | back to normal after the streams left "
          f"| slow or failed in the {args.recovery} s after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, d = r["base"], r["during"]
        ok = sum(1 for v in d if v != float("inf"))
        failed = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())) or "-"
        after, slow = r["recovery"]
        rec = (f"{after:.1f} s" if after is not None else f"not within {args.recovery} s")
        print(f"| {r['name']} | {ms(percentile(b, 0.5))} / {ms(percentile(b, 0.99))} "
              f"| {ms(percentile(d, 0.5))} / {ms(percentile(d, 0.99))} | {ms(percentile(r['steady'], 0.99))} "
              f"| {ok} of {len(d)} | {failed} "
              f"| {rec} | {slow} |")

    print("\n#### Memory and CPU\n")
    print("| server | worker RSS MiB: before / with the streams | per stream served, KiB "
          "| all its processes, MiB: before / with | worker threads: before / with / at the end "
          "| CPU with the streams |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        per = "-"
        if r["live"] and r["rss_before"] is not None and r["rss_with"] is not None:
            per = f"{(r['rss_with'] - r['rss_before']) / r['live']:.0f}"
        th = " / ".join("-" if t is None else f"{t:.0f}" for t in (r["threads_before"], r["threads_with"],
                                                                 r["threads_end"]))
        cpu = "-" if r["cpu"] is None else f"{r['cpu']:.2f}"
        print(f"| {r['name']} | {mib(r['rss_before'])} / {mib(r['rss_with'])} | {per} "
              f"| {mib(r['total_before'])} / {mib(r['total_with'])} | {th} | {cpu} |")

    module = next((r for r in rows if r["name"] == "module"), None)
    peers = [r for r in rows if r["name"] != "module"]
    if module and peers:
        print("\n#### The module against each peer (same run)\n")
        print("| | " + " | ".join(r["name"] for r in peers) + " |")
        print("|---|" + "---|" * len(peers))

        def ratio(a, b):
            if a is None or b is None or b == 0 or a == float("inf") or b == float("inf"):
                return "-"
            return f"{a / b:.2f}"
        mp99 = percentile(module["during"], 0.99)
        print("| streams served at the end, module ÷ peer | "
              + " | ".join(ratio(module["live"], r["live"]) if r["live"] else f"{module['live']} vs 0"
                           for r in peers) + " |")
        print("| short p99 with the streams, peer ÷ module | "
              + " | ".join(ratio(percentile(r["during"], 0.99), mp99) if percentile(r["during"], 0.99) != float("inf")
                           else "peer: no answer" for r in peers) + " |")

        def per_stream(r):
            if r["live"] and r["rss_before"] is not None and r["rss_with"] is not None:
                return (r["rss_with"] - r["rss_before"]) / r["live"]
            return None
        print("| worker RSS per stream served, module ÷ peer | "
              + " | ".join(ratio(per_stream(module), per_stream(r)) for r in peers) + " |")
        print("| worker RSS with the streams, module ÷ peer | "
              + " | ".join(ratio(module["rss_with"], r["rss_with"]) for r in peers) + " |")
        print("| RSS of all the server's processes with the streams, module ÷ peer | "
              + " | ".join(ratio(module["total_with"], r["total_with"]) for r in peers) + " |")
    print("\nConfigurations:")
    for r in rows:
        print(f"- {r['name']}: {r['how']}")
    for r in rows:
        if not r["alive"]:
            print(f"- {r['name']}: the worker was gone at the end (see its log)")
    print("\n\"first line read\": from the stream's connect to the client reading its first line; \"made by "
          "the app\": from the connect to the clock the app wrote into that line (the client's own delays in "
          "reading a thousand sockets do not touch it).")
    print(f"\"served at the end\": streams that got a line in the last {LIVE_WINDOW} s before the clients left. "
          f"\"back to normal\": from the disconnect to the start of the first {RECOVERY_WINDOW:g} s in which every short "
          f"request was answered correctly and fast (under max({FAST_FLOOR * 1000:.0f} ms, 2 x that server's p99 "
          "before the streams)); the next column counts the others after the disconnect (a backlog left by the "
          "streams, and the machine's noise). RSS per stream: (worker RSS with the streams - before) / streams served "
          "at the end; a server that starts all its threads up front (uWSGI, cheroot) has paid for them before. "
          "All the server's processes: its master or launcher, and the nginx in front of uWSGI and gunicorn.")


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    if hard < want and os.geteuid() == 0:
        hard = want
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if min(want, hard) < want:
        sys.exit(f"RLIMIT_NOFILE is {hard} at most; {want} are needed for {Limits.streams} streams (run as root "
                 "or raise the hard limit)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams (default 1000)")
    ap.add_argument("--rate", type=float, default=100, help="short requests a second (default 100)")
    ap.add_argument("--hold", type=int, default=20, help="seconds the streams stay open (default 20)")
    ap.add_argument("--baseline", type=float, default=5, help="seconds of short requests before the streams "
                    f"(after a {WARM_UP:g} s warm-up; default 5)")
    ap.add_argument("--recovery", type=int, default=30, help="seconds of short requests after (default 30)")
    ap.add_argument("--timeout", type=float, default=10, help="a short request's timeout (default 10)")
    ap.add_argument("--wait", choices=["sleep", "queue"], default="sleep",
                    help="what the app blocks in between lines (default sleep)")
    ap.add_argument("--servers", default=",".join(SERVERS), help=f"comma list of: {', '.join(SERVERS)}")
    ap.add_argument("--threads", help="NAME=N,...: the thread setting instead of the default ("
                    + ", ".join(f"{k}: {v}" for k, v in WHAT_N.items()) + ")")
    ap.add_argument("--raw", help="a directory to write each server's raw timings to (NAME.json)")
    args = ap.parse_args()
    if args.raw:
        os.makedirs(args.raw, exist_ok=True)
    names = [s for s in args.servers.split(",") if s]
    for n in names:
        if n not in SERVERS:
            sys.exit(f"unknown server {n}; known: {', '.join(SERVERS)}")
    threads = {n: SERVERS[n].default for n in SERVERS}
    for item in filter(None, (args.threads or "").split(",")):
        name, _, value = item.partition("=")
        if name not in threads or not value.isdigit():
            sys.exit(f"--threads: expected NAME=N with NAME one of {', '.join(SERVERS)}, got {item!r}")
        threads[name] = int(value)
    Limits.streams = args.streams
    raise_nofile(Limits.nofile() + 3 * args.streams)
    with Ctx(args) as ctx:
        for n in names:
            why = SERVERS[n].available(ctx)
            if why:
                sys.exit(f"{n}: {why}")
        rows = []
        for n in names:
            print(f"{n}: measuring ({args.streams} streams)...", file=sys.stderr)
            rows.append(measure(ctx, args, SERVERS[n], threads[n]))
            r = rows[-1]
            print(f"{n}: {r['within']}/{r['streams']} first lines within 1 s, {r['live']} served at the end, "
                  f"short p99 {ms(percentile(r['during'], 0.99))} ms with the streams", file=sys.stderr)
        report(args, rows, ctx, names)


if __name__ == "__main__":
    main()
