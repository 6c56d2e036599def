"""Test harness: builds the modules, starts a real nginx or Apache httpd with them on 127.0.0.1,
speaks HTTP to them.

Tests about WSGI semantics take the `wsgi_factory` fixture, which runs them once per server
(`[nginx]`, `[apache]`) from server-neutral `route()`s; tests about nginx's directives and
processes take `nginx_factory`."""

import http.client
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
# The build under test: target/release, or NGX_WSGI_TARGET_DIR's (scripts/test-pythons builds the
# modules for each Python in a target directory of its own, scripts/test-asan its sanitized build).
RELEASE = pathlib.Path(os.environ.get("NGX_WSGI_TARGET_DIR", ROOT / "target")) / "release"
# Extra environment of the servers (scripts/test-asan: the sanitizer runtime for Debian's apache2,
# PYTHONMALLOC for both servers' interpreters).
SERVER_ENV = {k: v for k, v in os.environ.items() if k in ("PYTHONMALLOC", "ASAN_OPTIONS")}
if os.environ.get("NGX_WSGI_APACHE_PRELOAD"):
    SERVER_ENV["LD_PRELOAD"] = os.environ["NGX_WSGI_APACHE_PRELOAD"]

# The files that take longest (seconds of one run, 2026-12-07: 143, 143, 113, 122, 138), handed
# out first: pytest-xdist's loadfile hands whole files out in the order of the collection, which
# it first sorts by each file's number of tests, and the longest files held few tests (the
# FastAPI replay's 143 s are one test): collected last, they ended the run alone (a schedule of
# the measured durations: 466 s in xdist's order, 365 s with these first and the rest as
# collected).
LONGEST_FILES = ["test_lifecycle.py", "test_fastapi_replay.py", "test_worker_exit.py", "test_timeout.py",
                 "test_asgi.py"]


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
    items.sort(key=rank)  # stable: each file's tests, and the other files, keep their order


def marks(directory, kind):
    return sorted(int(name.split("-")[1]) for name in os.listdir(directory) if name.startswith(kind + "-"))


METRICS = "  location = /metrics { wsgi_status; }\n"


def wait_inside_python(server, count=1):
    """Until `count` requests are inside the app: a signal sent earlier could find one still in
    the listen queue, which a quitting nginx closes."""
    wait_for(lambda: re.search(rf"^wsgi_requests_in_flight {count}$",
                               requests.get(server.url("/metrics"), timeout=10).text, re.M),
             what=f"{count} request(s) inside Python")


def slow_request(server, results):
    """GET /slow (sleepy.py takes its time): its status and text, or the error, in `results`."""
    try:
        r = requests.get(server.url("/slow"), timeout=30)
        results.append((r.status_code, r.text))
    except requests.RequestException as e:
        results.append(("error", str(e)))


# App specs that cannot be loaded, and what the configuration check says about each.
UNLOADABLE_APPS = [
    (f"{APPS}/broken/syntax_error.py", "SyntaxError"),
    (f"{APPS}/broken/import_error.py", "ModuleNotFoundError: No module named 'module_that_does_not_exist_anywhere'"),
    (f"{APPS}/broken/raises_at_import.py", "RuntimeError: the app refuses to start"),
    (f"{APPS}/broken/not_callable.py", "not_callable.py:application is not callable"),
    (f"{APPS}/sleepy.py:no_such_callable", "has no attribute \"no_such_callable\""),
    (f"{APPS}/broken/missing.py", "missing.py does not exist or is not a file"),
    ("no_such_package.wsgi", "ModuleNotFoundError: No module named 'no_such_package'"),
    # An ASGI app under wsgi_app would answer every request with a 500.
    (f"{APPS}/asgi_kinds.py:app", "asgi_kinds.py:app is an ASGI application"),
    (f"{APPS}/asgi_kinds.py:framework_instance", "framework_instance is an ASGI application"),
]


def _port_pool():
    """This process's ports, in random order: below the kernel's ephemeral range (which the
    clients' own connections take from, and bind() to port 0 too), and under pytest-xdist every
    16th of them, by the worker's number, so that two workers never hand out the same port (a
    worker that xdist restarts gets the next number)."""
    xdist = os.environ.get("PYTEST_XDIST_WORKER")
    stride = 16 if xdist else 1
    share = int(xdist[2:]) % stride if xdist else 0
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
    ports = list(range(max(1024, ephemeral - 24000) + share, ephemeral, stride))
    random.shuffle(ports)
    return iter(ports)


_PORTS = _port_pool()


def free_port():
    """A port nothing listens on, never the same twice in a run."""
    for port in _PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port left below the ephemeral range (net.ipv4.ip_local_port_range)")


def python_home():
    """The test runner's virtualenv: the embedded interpreter gets the same packages."""
    return sys.prefix if sys.prefix != sys.base_prefix else None


@pytest.fixture(scope="session")
def built():
    if os.environ.get("NGX_WSGI_SKIP_BUILD") != "1":
        subprocess.run([str(ROOT / "scripts/build"), "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(
        [str(RELEASE / "ngx-wsgi"), "paths"], capture_output=True, text=True, check=True
    ).stdout
    paths = dict(line.split(": ", 1) for line in out.splitlines())
    return paths["module"], paths["nginx"]


APACHE_MODULE = RELEASE / "libmod_ngx_wsgi.so"
APACHE_BINARY = shutil.which("apache2") or "/usr/sbin/apache2"
APACHE_MODULES = pathlib.Path("/usr/lib/apache2/modules")


def start_server(server, name, argv, env=None, new_session=False):
    """Starts `server` in the foreground and waits until its port answers and it has workers."""
    server.stderr = open(server.prefix / "stderr.log", "wb")
    server.proc = subprocess.Popen(argv, stdout=server.stderr, stderr=server.stderr, env=env,
                                   start_new_session=new_session)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{name} exited {server.proc.returncode}:\n{server.output()}")
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            if server.worker_pids():
                return server
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start:\n{server.output()}")


_NGINX_VERSIONS = {}


def nginx_version(binary):
    """The version of the nginx `binary` as a tuple, e.g. (1, 28, 0)."""
    if binary not in _NGINX_VERSIONS:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr
        found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
        _NGINX_VERSIONS[binary] = tuple(int(n) for n in found.groups()) if found else (0, 0, 0)
    return _NGINX_VERSIONS[binary]


class Nginx:
    """One nginx master (foreground) with the module, its own prefix, port and error log."""

    kind = "nginx"

    def __init__(self, built, locations, http_extra="", main_extra="", server_extra="",
                 workers=1, home=True, listen_extra="", server_name="test.local", worker_connections=1024):
        self.module, self.binary = built
        # `http2 on;` is nginx 1.25.1's; before it (Ubuntu 22.04's 1.18), HTTP/2 is a parameter of
        # `listen`, and a plain listener with it speaks HTTP/2 only (prior knowledge).
        if "http2 on;" in server_extra and nginx_version(self.binary) < (1, 25, 1):
            server_extra = server_extra.replace("http2 on;", "")
            listen_extra += " http2"
        self.prefix = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-test-"))
        (self.prefix / "logs").mkdir()
        self.port = free_port()
        self.proc = None
        user = "user root root;\n" if os.geteuid() == 0 else ""
        home_line = f"wsgi_python_home {python_home()};\n" if home and python_home() else ""
        # nginx gives its workers only the environment its `env` directives name.
        main_extra = "".join(f"env {k};\n" for k in SERVER_ENV if k == "PYTHONMALLOC") + main_extra
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(
            f"load_module {self.module};\n{user}daemon off;\nmaster_process on;\n"
            f"worker_processes {workers};\nerror_log {self.prefix}/logs/error.log info;\n"
            f"pid {self.prefix}/logs/nginx.pid;\n{main_extra}\n"
            f"events {{ worker_connections {worker_connections}; }}\n"
            "http {\n access_log off;\n"
            f" {home_line} {http_extra}\n"
            f" server {{\n  listen 127.0.0.1:{self.port}{listen_extra};\n  server_name {server_name};\n"
            f"  {server_extra}\n{locations}\n }}\n}}\n"
        )

    def run(self, *args):
        return subprocess.run([self.binary, "-p", str(self.prefix), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60)

    def start(self, env=None):
        """`env`: variables set (None: removed) in the master's environment."""
        environment = None
        if env:
            environment = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        return start_server(self, "nginx", [self.binary, "-p", str(self.prefix), "-c", str(self.conf)],
                            env=environment)

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


# TLS ended at a load balancer that says so in X-Forwarded-Proto, trusted from 127.0.0.1 only
# (the tests' client): `wsgi_scheme $app_scheme;` then tells the app that scheme.
FORWARDED_SCHEME = """
  geo $realip_remote_addr $from_balancer { default 0; 127.0.0.1 1; }
  map "$from_balancer:$http_x_forwarded_proto" $app_scheme { default $scheme; ~*^1:(https?)$ $1; }
"""


def asgi_location(path, app, extra=""):
    return f"  location {path} {{\n   asgi_app {app};\n   {extra}\n  }}\n"


def location(path, app, extra=""):
    return f"  location {path} {{\n   wsgi_app {app};\n   {extra}\n  }}\n"


def statuses_of_concurrent(server, path, n):
    """The statuses of `n` GETs of `path` sent at once."""
    results = []
    threads = [threading.Thread(target=lambda: results.append(requests.get(server.url(path), timeout=60).status_code))
               for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


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


def http_get(server, target, headers=None):
    """GET `target` exactly as written (no client-side normalisation of dots or escapes);
    returns status, headers and body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", target, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def read_until(sock, marker, timeout=10):
    """Reads from `sock` until `marker` arrives or the peer closes."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def assert_unanswered(sock, request):
    """Sends `request` on `sock`, a connection the server has closed: no answer comes."""
    try:
        sock.sendall(request)
        answer = read_until(sock, b"\r\n\r\n")
    except ConnectionResetError:
        answer = b""
    assert answer == b"", answer


def socketio_by_polling(port, auth, source="127.0.0.1"):
    """A Socket.IO connection by Engine.IO's long-polling from `source` (a loopback address),
    each request on a new connection, as a browser's may be: the handshake, the connect packet
    with `auth`, then the packets of the poll that answers it."""
    def request(method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(source, 0))
        c.request(method, path, body=body)
        r = c.getresponse()
        data = r.read()
        c.close()
        assert r.status == 200, (method, path, r.status, data)
        return data
    handshake = request("GET", "/socket.io/?EIO=4&transport=polling")
    assert handshake.startswith(b"0"), handshake
    path = f"/socket.io/?EIO=4&transport=polling&sid={json.loads(handshake[1:])['sid']}"
    assert request("POST", path, b"40" + json.dumps(auth).encode()) == b"OK"
    return request("GET", path).split(b"\x1e")


class Route:
    """One app mount, written the nginx way: `/prefix/`, `/` , `= /exact` or `~ regex`."""

    def __init__(self, path, app, nginx="", apache=""):
        self.path, self.app, self.nginx, self.apache = path, app, nginx, apache

    def for_nginx(self):
        return location(self.path, self.app, self.nginx)

    def for_apache(self):
        if self.path.startswith("= "):
            section = f'<LocationMatch "^{re.escape(self.path[2:])}$">'
            end = "</LocationMatch>"
        elif self.path.startswith("~ "):
            section, end = f'<LocationMatch "{self.path[2:]}">', "</LocationMatch>"
        else:
            section, end = f"<Location {self.path}>", "</Location>"
        return f"{section}\n  NgxWsgiApp {self.app}\n  {self.apache}\n{end}\n"


def route(path, app, nginx="", apache=""):
    return Route(path, app, nginx, apache)


class Status:
    """Where the server answers its Prometheus metrics: `wsgi_status` / `SetHandler ngx-wsgi-status`."""

    def __init__(self, path):
        self.path = path

    def for_nginx(self):
        return f"  location = {self.path} {{ wsgi_status; }}\n"

    def for_apache(self):
        return f"<Location {self.path}>\n  SetHandler ngx-wsgi-status\n</Location>\n"


def status(path):
    return Status(path)


APACHE_H2 = f"LoadModule http2_module {APACHE_MODULES}/mod_http2.so\nProtocols h2 h2c http/1.1\n"


def tls(directory):
    """Server arguments for TLS (and HTTP/2 over it) with a self-signed certificate made in
    `directory`, readable by the servers' workers."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=test.local",
                    "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"), "-days", "2"],
                   check=True, capture_output=True)
    directory.chmod(0o755)
    (directory / "key.pem").chmod(0o644)
    cert, key = directory / "cert.pem", directory / "key.pem"
    return dict(
        nginx=dict(listen_extra=" ssl", server_extra=f"http2 on; ssl_certificate {cert}; ssl_certificate_key {key};"),
        apache=dict(server_extra=APACHE_H2 + f"LoadModule ssl_module {APACHE_MODULES}/mod_ssl.so\n"
                    f"SSLEngine on\nSSLCertificateFile {cert}\nSSLCertificateKeyFile {key}\n"),
    )


def wait_for_peer(port, proc, what, timeout=60):
    """Waits until a peer server (`proc`, its stderr a pipe) listens on `port`; raises with its
    stderr when it exits or does not listen in time (then killed: never a hang on the pipe)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                try:
                    err = proc.communicate(timeout=5)[1] or b""
                except subprocess.TimeoutExpired:
                    err = b"(its stderr is held open by a child)"
                raise RuntimeError(f"{what} did not start: {err.decode(errors='replace')}")
            time.sleep(0.05)


def stop_peers(procs):
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(condition, timeout=20, what="the condition"):
    """Polls `condition` (a readiness signal: a log line, a process, a metric) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# Chunked bodies that break after a first chunk: a chunk size that is not hex, a chunk longer
# than its size.
BAD_CHUNKS = [("size", b"ZZ\r\nbad\r\n"), ("framing", b"5\r\nhelloXX\r\n")]


def assert_broken_chunk_is_400(port, path, app_has_read, bad):
    """POSTs `hello` as the first chunk of a body to `path`; once `app_has_read()`, sends `bad`:
    the answer must be the client's 400, alone on a connection that then closes (where a next
    request would start is lost)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n".encode())
        wait_for(app_has_read, what="the app to read the first chunk")
        s.sendall(bad)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 400 "), response[:200]
    assert response.count(b"HTTP/1.1 ") == 1, response[:400]


def send_chunks(sock, head, size, count):
    """Sends `head`, then `count` chunks of `size` bytes of a chunked body: one over the
    location's limit, which the server may refuse (and stop reading) before all is sent."""
    sock.sendall(head)
    chunk = b"%x\r\n%s\r\n" % (size, b"x" * size)
    try:
        for _ in range(count):
            sock.sendall(chunk)
    except OSError:
        pass


def post_3000_bytes(port, path, framing):
    """POSTs 3000 bytes to `path` with a Content-Length or chunked (`framing`), or a chunked body
    broken after its first 5 bytes ("broken"), or over HTTP/2 with a length or without ("h2
    length", "h2 stream"), on a connection of its own; returns the answer up to the end of its
    JSON body."""
    if framing.startswith("h2"):
        without_length = ["-H", "Transfer-Encoding: chunked"] if framing == "h2 stream" else []
        return subprocess.run(["curl", "-sS", "-i", "--http2-prior-knowledge", *without_length, "--data-binary", "@-",
                               f"http://127.0.0.1:{port}{path}"], input=b"x" * 3000, capture_output=True,
                              timeout=30, check=True).stdout
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if framing == "length":
            s.sendall(f"{head}Content-Length: 3000\r\n\r\n".encode() + b"x" * 3000)
        elif framing == "chunked":
            send_chunks(s, f"{head}Transfer-Encoding: chunked\r\n\r\n".encode(), 500, 6)
            s.sendall(b"0\r\n\r\n")
        else:
            s.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n".encode())
        return recv_until(s, b"}")


def recv_until(sock, marker):
    """Reads from `sock` until `marker` has arrived; returns everything read."""
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def half_closing_clients(port, requests):
    """Sends each request (bytes) on a connection of its own, closed for writing right behind it
    (in the same burst: nginx may read the close with the request), and reads the answer."""
    for request in requests:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass


class Apache:
    """One Apache httpd (event MPM unless told another, foreground) with the module: its own
    ServerRoot, port and error log, `processes` child processes with `threads` worker threads
    each (prefork: one thread each)."""

    kind = "apache"

    def __init__(self, routes, threads=16, home=True, server_extra="", env=None, processes=1, mpm="event"):
        self.binary = APACHE_BINARY
        self.prefix = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-apache-test-"))
        # The children run as nobody when the tests run as root: they walk the document root.
        self.prefix.chmod(0o755)
        (self.prefix / "logs").mkdir()
        (self.prefix / "htdocs").mkdir()
        self.port = free_port()
        self.proc = None
        self.env = env
        user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
        home_line = f"NgxWsgiPythonHome {python_home()}\n" if home and python_home() else ""
        self.conf = self.prefix / "httpd.conf"
        self.conf.write_text(
            f"ServerRoot {self.prefix}\n"
            f"LoadModule mpm_{mpm}_module {APACHE_MODULES}/mod_mpm_{mpm}.so\n"
            f"LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so\n"
            # Debian enables mod_mime: it types files, and must not type an app's responses.
            f"LoadModule mime_module {APACHE_MODULES}/mod_mime.so\nTypesConfig /etc/mime.types\n"
            f"LoadModule ngx_wsgi_module {APACHE_MODULE}\n"
            f"{user}Listen 127.0.0.1:{self.port}\nServerName test.local\n"
            f"PidFile {self.prefix}/logs/httpd.pid\nDefaultRuntimeDir {self.prefix}/logs\n"
            f"ErrorLog {self.prefix}/logs/error.log\nLogLevel info\n"
            f"DocumentRoot {self.prefix}/htdocs\n"
            # Debian's apache2.conf: nothing from the file system unless a <Directory> grants it.
            "<Directory />\n AllowOverride None\n Require all denied\n</Directory>\n"
            f"<Directory {self.prefix}/htdocs>\n Require all granted\n</Directory>\n"
            + self.mpm(mpm, processes, threads)
            # %2F in a path is decoded like nginx does, instead of Apache's 404.
            + "AllowEncodedSlashes On\n"
            f"{home_line}{server_extra}\n"
            + "".join(r.for_apache() for r in routes)
        )

    @staticmethod
    def mpm(mpm, processes, threads):
        if mpm == "prefork":
            return (f"StartServers {processes}\nServerLimit {2 * processes}\nMaxRequestWorkers {processes}\n"
                    f"MinSpareServers 1\nMaxSpareServers {processes}\n")
        if processes == 1:
            return (f"StartServers 1\nServerLimit 1\nThreadsPerChild {threads}\nThreadLimit {threads}\n"
                    f"MaxRequestWorkers {threads}\nMinSpareThreads 1\nMaxSpareThreads {threads}\n")
        # Slots beyond MaxRequestWorkers are for children that finish gracefully (recycled or
        # restarted) while their replacements start; a child's worth of idle threads is kept.
        return (f"StartServers {processes}\nServerLimit {2 * processes}\nThreadsPerChild {threads}\n"
                f"ThreadLimit {threads}\nMaxRequestWorkers {processes * threads}\n"
                f"MinSpareThreads {threads}\nMaxSpareThreads {processes * threads}\n")

    def run(self, *args):
        return subprocess.run([self.binary, "-f", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **SERVER_ENV})

    def start(self):
        # Its own process group: prefork's parent stops its children by signalling its group.
        return start_server(self, "apache2", [self.binary, "-DFOREGROUND", "-f", str(self.conf)],
                            env={**os.environ, **SERVER_ENV, **(self.env or {})}, new_session=True)

    output = Nginx.output
    error_log = Nginx.error_log
    children = Nginx.children
    url = Nginx.url
    send_signal = Nginx.send_signal

    def worker_pids(self):
        return [pid for pid, _ in self.children()]

    def stop(self, sig=signal.SIGTERM, timeout=30):
        return Nginx.stop(self, sig, timeout)


SERVERS = [s for s in os.environ.get("NGX_WSGI_SERVERS", "nginx,apache").split(",") if s]


@pytest.fixture(scope="session", params=SERVERS)
def wsgi_factory(request, built):
    """Makes a server of the parametrised kind from `route()`s; extra keyword arguments
    `nginx={...}` / `apache={...}` go to that server's constructor only."""
    kind = request.param
    if kind == "apache" and not (os.path.exists(APACHE_BINARY) and APACHE_MODULE.exists()):
        pytest.skip("apache2 or the Apache module is not built/installed (scripts/install-deps)")
    started = []

    def make(routes, nginx=None, apache=None):
        if kind == "nginx":
            server = Nginx(built, "".join(r.for_nginx() for r in routes), **(nginx or {}))
        else:
            server = Apache(routes, **(apache or {}))
        started.append(server)
        return server

    make.kind = kind
    yield make
    for server in started:
        server.stop()
