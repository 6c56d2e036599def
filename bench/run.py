#!/usr/bin/env python3
"""Bench (not a test): wrk against nginx+ngx_http_wsgi_module and against gunicorn (gthread)
behind nginx proxy_pass, with nginx's own `return 200` as the ceiling, all measured in one run.

    .venv/bin/python bench/run.py [--duration 5] [--rounds 3] [--threads 32]

Every server gets the same process count (the number of cores) and the same threads per process.
Rounds are interleaved; each cell is the median of the rounds. Prints a Markdown table.
"""
import argparse
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORKLOADS = ["hello", "json", "echo", "sleep"]
LABELS = {"hello": "hello (13 B)", "json": "JSON", "echo": "16 KiB POST echo", "sleep": "10 ms sleep"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start")


def paths():
    out = subprocess.run([str(ROOT / "target/release/ngx-wsgi"), "paths"], capture_output=True, text=True,
                         check=True).stdout
    d = dict(line.split(": ", 1) for line in out.splitlines())
    return d["module"], d["nginx"]


def start_nginx(module, nginx, workers, threads, module_port, proxy_port, ceiling_port, gunicorn_port):
    prefix = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-bench-"))
    (prefix / "logs").mkdir()
    user = "user root root;" if os.geteuid() == 0 else ""
    wsgi = "".join(f"    location = /{w} {{ wsgi_app {BENCH}/apps.py:{'json_app' if w == 'json' else w}; }}\n"
                   for w in WORKLOADS)
    (prefix / "nginx.conf").write_text(f"""
load_module {module};
{user}
daemon off;
worker_processes {workers};
error_log {prefix}/logs/error.log warn;
pid {prefix}/logs/nginx.pid;
thread_pool default threads={threads} max_queue=65536;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  wsgi_python_home {sys.prefix};
  client_body_buffer_size 64k;
  upstream gunicorn {{ server 127.0.0.1:{gunicorn_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{module_port};
{wsgi}  }}
  server {{
    listen 127.0.0.1:{proxy_port};
    location / {{
      proxy_pass http://gunicorn;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering on;
    }}
  }}
  server {{
    listen 127.0.0.1:{ceiling_port};
    location / {{ return 200 "Hello, world!"; }}
  }}
}}
""")
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    return proc, prefix


def wrk(url, duration, connections, script=None):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        print(f"warning: {url}: {errors.group(0) if errors else ''} {socket_errors.group(0) if socket_errors else ''}",
              file=sys.stderr)
    return rps, float(p99.group(1)) * scale


def cpu_seconds(pids):
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (scripts/install-deps)")
    workers = os.cpu_count()
    module, nginx = paths()
    ports = {k: free_port() for k in ["module", "proxy", "ceiling", "gunicorn"]}
    gunicorn = subprocess.Popen(
        [str(pathlib.Path(sys.executable).parent / "gunicorn"), "--chdir", str(BENCH), "-k", "gthread",
         "-w", str(workers), "--threads", str(args.threads), "-b", f"127.0.0.1:{ports['gunicorn']}",
         "--log-level", "warning", "--keep-alive", "30", "apps:dispatch"])
    ngx, prefix = start_nginx(module, nginx, workers, args.threads, ports["module"], ports["proxy"],
                              ports["ceiling"], ports["gunicorn"])
    try:
        for port, proc, what in [(ports["gunicorn"], gunicorn, "gunicorn"), (ports["module"], ngx, "nginx")]:
            wait_port(port, proc, what)
        time.sleep(1)
        post = prefix / "post.lua"
        post.write_text('wrk.method = "POST"\nwrk.body = string.rep("x", 16384)\n'
                        'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        targets = {
            "ceiling": lambda w: f"http://127.0.0.1:{ports['ceiling']}/",
            "module": lambda w: f"http://127.0.0.1:{ports['module']}/{w}",
            "gunicorn": lambda w: f"http://127.0.0.1:{ports['proxy']}/{w}",
        }
        results = {(t, w): [] for t in targets for w in WORKLOADS}
        cpu = {(t, w): [] for t in targets for w in WORKLOADS}
        server_pids = {"ceiling": [ngx.pid] + children(ngx.pid), "module": [ngx.pid] + children(ngx.pid),
                       "gunicorn": [gunicorn.pid] + children(gunicorn.pid) + children(ngx.pid)}
        for url in [targets["module"](w) for w in WORKLOADS] + [targets["gunicorn"](w) for w in WORKLOADS]:
            wrk(url, 1, args.connections, post if url.endswith("/echo") else None)  # warm-up
        for _ in range(args.rounds):
            for w in WORKLOADS:
                for t, url in targets.items():
                    before = cpu_seconds(server_pids[t])
                    rps, p99 = wrk(url(w), args.duration, args.connections, post if w == "echo" and t != "ceiling" else None)
                    cpu[(t, w)].append((cpu_seconds(server_pids[t]) - before) / args.duration)
                    results[(t, w)].append((rps, p99))
        med = {k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for k, v in results.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"\n{os.cpu_count()} cores, {workers} processes per server, {args.threads} threads per process, "
              f"wrk -t2 -c{args.connections} -d{args.duration}s, median of {args.rounds} interleaved rounds\n")
        print("| workload | nginx `return 200` req/s | module req/s | module / ceiling | module p99 ms | module CPU | "
              "gunicorn+proxy req/s | gunicorn / ceiling | gunicorn p99 ms | gunicorn CPU | module / gunicorn |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for w in WORKLOADS:
            c, m, g = med[("ceiling", w)], med[("module", w)], med[("gunicorn", w)]
            print(f"| {LABELS[w]} | {c[0]:.0f} | {m[0]:.0f} | {m[0] / c[0]:.2f} | {m[1]:.1f} | "
                  f"{cpu_med[('module', w)]:.2f} | {g[0]:.0f} | {g[0] / c[0]:.2f} | {g[1]:.1f} | "
                  f"{cpu_med[('gunicorn', w)]:.2f} | {m[0] / g[0]:.2f} |")
        print("\nCPU is the servers' CPU seconds per wall second (2.00 = both cores); for gunicorn it includes the"
              " proxying nginx.")
    finally:
        ngx.terminate()
        gunicorn.terminate()
        ngx.wait(timeout=30)
        gunicorn.wait(timeout=30)


if __name__ == "__main__":
    main()
