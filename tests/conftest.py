"""Test harness: builds the module, starts a real nginx with it on 127.0.0.1, speaks HTTP to it."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_home():
    """The test runner's virtualenv: the embedded interpreter gets the same packages."""
    return sys.prefix if sys.prefix != sys.base_prefix else None


@pytest.fixture(scope="session")
def built():
    if os.environ.get("NGX_WSGI_SKIP_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(
        [str(ROOT / "target/release/ngx-wsgi"), "paths"], capture_output=True, text=True, check=True
    ).stdout
    paths = dict(line.split(": ", 1) for line in out.splitlines())
    return paths["module"], paths["nginx"]


class Nginx:
    """One nginx master (foreground) with the module, its own prefix, port and error log."""

    def __init__(self, built, locations, http_extra="", main_extra="", server_extra="",
                 workers=1, home=True, listen_extra="", server_name="test.local"):
        self.module, self.binary = built
        self.prefix = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-test-"))
        (self.prefix / "logs").mkdir()
        self.port = free_port()
        self.proc = None
        user = "user root root;\n" if os.geteuid() == 0 else ""
        home_line = f"wsgi_python_home {python_home()};\n" if home and python_home() else ""
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(
            f"load_module {self.module};\n{user}daemon off;\nmaster_process on;\n"
            f"worker_processes {workers};\nerror_log {self.prefix}/logs/error.log info;\n"
            f"pid {self.prefix}/logs/nginx.pid;\n{main_extra}\n"
            "events { worker_connections 1024; }\n"
            "http {\n access_log off;\n"
            f" {home_line} {http_extra}\n"
            f" server {{\n  listen 127.0.0.1:{self.port}{listen_extra};\n  server_name {server_name};\n"
            f"  {server_extra}\n{locations}\n }}\n}}\n"
        )

    def run(self, *args):
        return subprocess.run([self.binary, "-p", str(self.prefix), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60)

    def start(self):
        self.stderr = open(self.prefix / "stderr.log", "wb")
        self.proc = subprocess.Popen([self.binary, "-p", str(self.prefix), "-c", str(self.conf)],
                                     stdout=self.stderr, stderr=self.stderr)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.worker_pids():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not start:\n{self.output()}")

    def output(self):
        text = (self.prefix / "stderr.log").read_text(errors="replace") if (self.prefix / "stderr.log").exists() else ""
        return text + self.error_log()

    def error_log(self):
        path = self.prefix / "logs/error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def worker_pids(self):
        return [pid for pid, title in self.children() if "worker process" in title]

    def children(self):
        """(pid, process title) of the master's children."""
        pids = []
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.proc.pid:
                try:
                    title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                pids.append((int(entry.name), title))
        return sorted(pids)

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGQUIT, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.stderr.close()
        return self.proc.returncode if self.proc else None


@pytest.fixture(scope="session")
def nginx_factory(built):
    started = []

    def make(locations, **kwargs):
        server = Nginx(built, locations, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def location(path, app, extra=""):
    return f"  location {path} {{\n   wsgi_app {app};\n   {extra}\n  }}\n"


def raw_request(port, data, timeout=10, read_until_close=True):
    """Sends raw bytes, returns everything the server sent until it closed (or timed out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close:
                    break
        except socket.timeout:
            chunks.append(b"<timeout>")
        return b"".join(chunks)
