#!/usr/bin/env python3
"""Memory of open WebSockets (not a test): one worker serving an ASGI echo app; --sockets
connections are opened, each sends one message and reads its echo, then stays open and idle.
Prints the worker's RSS before and after, and what one open socket costs.

    .venv/bin/python bench/ws_memory.py [--sockets 2000]

The client's and nginx's descriptor limits must allow --sockets connections (ulimit -n).
"""
import argparse
import os
import pathlib
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import ROOT, free_port, paths, stop_process, wait_port  # noqa: E402

APP = ROOT / "tests/apps/asgi_ws_echo.py"
HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
# "hi", masked with a zero key.
MESSAGE = bytes([0x81, 0x82, 0, 0, 0, 0]) + b"hi"


def rss_kib(pid):
    return int(re.search(r"^VmRSS:\s+(\d+)", pathlib.Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def worker_of(master):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in pathlib.Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                    return int(entry.name)
        time.sleep(0.1)
    sys.exit("no worker process")


def open_socket(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(HANDSHAKE + MESSAGE)
    got = b""
    while not got.endswith(b"\x81\x02hi"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("the server closed a socket")
        got += chunk
    return s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=2000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.sockets + 1000), hard))
    module, nginx = paths()
    prefix = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-ws-"))
    (prefix / "logs").mkdir()
    port = free_port()
    user = "user root root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(f"""
load_module {module};
{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile {args.sockets + 1000};
error_log {prefix}/logs/error.log warn;
pid {prefix}/logs/nginx.pid;
events {{ worker_connections {args.sockets + 100}; }}
http {{
  access_log off;
  wsgi_python_home {sys.prefix};
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ asgi_app {APP}; }}
  }}
}}
""")
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    try:
        wait_port(port, proc, "nginx")
        worker = worker_of(proc.pid)
        warm = [open_socket(port) for _ in range(20)]
        time.sleep(1)
        before = rss_kib(worker)
        socks = [open_socket(port) for _ in range(args.sockets)]
        time.sleep(2)
        after = rss_kib(worker)
        print(f"{args.sockets} open WebSockets: worker RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
              f"{(after - before) / args.sockets:.1f} KiB per socket")
        for s in socks + warm:
            s.close()
    finally:
        stop_process(proc)


if __name__ == "__main__":
    main()
