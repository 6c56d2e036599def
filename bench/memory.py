#!/usr/bin/env python3
"""Memory (not a test): RSS of one worker serving a Flask app, the module against a gunicorn
(gthread) worker with the same app and thread count, then the module's RSS over many requests.

    .venv/bin/python bench/memory.py [--requests 1000000] [--threads 32]

Both servers run one worker process. Each is warmed up with the same requests (so every pool
thread has run the app), then RSS and PSS are read from /proc. The module then serves
`--requests` more requests with wrk, and its RSS is printed after each slice.
"""
import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import ROOT, free_port, paths, wait_port  # noqa: E402

APP_DIR = ROOT / "tests/apps/frameworks"
PATHS = ["/", "/hello/world?q=x", "/teapot"]


def memory_kib(pid):
    """(RSS, PSS) of one process, in KiB."""
    rollup = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text()
    rss = int(re.search(r"^Rss:\s+(\d+)", rollup, re.M).group(1))
    pss = int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
    return rss, pss


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def warm(port, connections):
    """The same short load for every server, so every thread has run the app."""
    for path in PATHS:
        subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", f"http://127.0.0.1:{port}{path}"],
                       check=True, capture_output=True)


def wrk_requests(port, seconds, connections):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                         check=True, capture_output=True, text=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def start_module(threads):
    module, nginx = paths()
    prefix = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-mem-"))
    (prefix / "logs").mkdir()
    port = free_port()
    user = "user root root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(f"""
load_module {module};
{user}
daemon off;
worker_processes 1;
error_log {prefix}/logs/error.log warn;
pid {prefix}/logs/nginx.pid;
thread_pool default threads={threads};
events {{ worker_connections 1024; }}
http {{
  access_log off;
  wsgi_python_home {sys.prefix};
  wsgi_thread_pool default;   # a fixed pool of --threads, as gunicorn's (not the module's own threads)
  server {{
    listen 127.0.0.1:{port};
    location / {{ wsgi_app {APP_DIR}/flask_app.py:app; }}
  }}
}}
""")
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    wait_port(port, proc, "nginx")
    return proc, port


def start_gunicorn(threads):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", str(threads),
                             "-w", "1", "-b", f"127.0.0.1:{port}", "--chdir", str(APP_DIR), "flask_app:app"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "gunicorn")
    return proc, port


def worker_of(proc):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = children(proc.pid)
        if kids:
            return kids[0]
        time.sleep(0.1)
    sys.exit("no worker process")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--slice", type=int, default=10, help="seconds of wrk between RSS readings")
    args = ap.parse_args()

    gunicorn, gport = start_gunicorn(args.threads)
    try:
        warm(gport, args.connections)
        g_rss, g_pss = memory_kib(worker_of(gunicorn))
    finally:
        gunicorn.terminate()
        gunicorn.wait()

    nginx, port = start_module(args.threads)
    try:
        worker = worker_of(nginx)
        warm(port, args.connections)
        m_rss, m_pss = memory_kib(worker)
        print(f"One worker, Flask app ({APP_DIR.name}/flask_app.py), {args.threads} threads, after the same warm-up:\n")
        print("| server | RSS MiB | PSS MiB |")
        print("|---|---|---|")
        print(f"| gunicorn gthread worker | {g_rss / 1024:.1f} | {g_pss / 1024:.1f} |")
        print(f"| nginx worker with the module | {m_rss / 1024:.1f} | {m_pss / 1024:.1f} |")
        print(f"\nmodule / gunicorn RSS: {m_rss / g_rss:.2f}\n")

        print(f"Module worker over {args.requests} more requests (wrk -c{args.connections}, GET /):\n")
        print("| requests | RSS MiB |")
        print("|---|---|")
        served, readings = 0, [(0, m_rss)]
        print(f"| 0 | {m_rss / 1024:.1f} |", flush=True)
        while served < args.requests:
            served += wrk_requests(port, args.slice, args.connections)
            rss, _ = memory_kib(worker)
            readings.append((served, rss))
            print(f"| {served} | {rss / 1024:.1f} |", flush=True)
        if worker not in children(nginx.pid):
            sys.exit("the worker was replaced during the run: the readings are not of one process")
        half = readings[len(readings) // 2][1]
        print(f"\ngrowth over the second half of the run: {(readings[-1][1] - half) / 1024:+.1f} MiB; "
              f"over the whole run: {(readings[-1][1] - m_rss) / 1024:+.1f} MiB")
    finally:
        nginx.terminate()
        nginx.wait()


if __name__ == "__main__":
    main()
