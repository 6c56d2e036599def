#!/usr/bin/env python3
"""Bench (not a test): wrk against nginx + ngx_http_wsgi_module and every peer WSGI server, with
nginx itself as the ceiling, all measured in one run on this machine.

    bench/setup && bench/.venv/bin/python bench/run.py [--duration 5] [--rounds 3]
        [--servers module,granian,...] [--workloads hello,json,...] [--threads NAME=CPU/IO,...]
    bench/.venv/bin/python bench/run.py --curve 1,2,4,8,16,32 [--workloads hello,json]

Every server runs the same callable (`bench/apps.py:dispatch`) with the same number of processes
(the number of cores). Threads per process are tuned per server (SERVERS below): one count for the
CPU-bound workloads and one for the 10 ms sleep. Rounds are interleaved (every server and workload
once per round, server order rotated each round); each cell is the median of the rounds.

Adding a server: subclass Server (or ApacheServer for an Apache module) with a name, default
threads and start(); put the class in SERVERS. See bench/README.md.
"""
import argparse
import http.client
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import apps  # noqa: E402  (the workloads: the expected bodies come from the same module)

CORES = os.cpu_count()
ECHO_SIZE = 16384
SLEEP_SECONDS = 0.010
IS_ROOT = os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# Workloads

class Workload:
    def __init__(self, name, label, path, kind="cpu", post=False, ceiling=None, check=None, reference=None):
        self.name, self.label, self.path, self.kind, self.post = name, label, path, kind, post
        self.ceiling = ceiling     # path on the ceiling nginx, or None: computed (the sleep limit)
        self.check = check         # body -> error string or None
        self.reference = reference  # (label, path on the ceiling nginx): a second nginx row, or None


def expect(value):
    return lambda body: None if body == value else f"body {body[:80]!r}... ({len(body)} B), expected {value[:80]!r}"


def expect_json(value):
    def check(body):
        try:
            got = json.loads(body)
        except ValueError:
            return f"not JSON: {body[:80]!r}"
        return None if got == value else f"JSON {got!r}, expected {value!r}"
    return check


WORKLOADS = {w.name: w for w in [
    Workload("hello", "hello (13 B)", "/hello", ceiling="/hello", check=expect(apps.HELLO)),
    Workload("json", "JSON", "/json", ceiling="/hello", check=expect_json(json.loads(apps.json_body("/json")))),
    Workload("flask", "Flask route (JSON)", "/flask?name=bench", ceiling="/hello",
             check=expect_json({"message": "Hello, bench!", "items": list(range(10))})),
    Workload("echo", "16 KiB POST echo", "/echo", post=True, ceiling="/echo16k"),   # checked with random bytes
    Workload("stream", "1 MiB streamed (16 x 64 KiB)", "/stream", ceiling="/stream1m",
             check=expect(apps.CHUNK * apps.STREAM_CHUNKS),
             reference=("nginx, same file, sendfile off (copies the bytes, as any app server must)",
                        "/stream1m-copy")),
    Workload("sleep", "10 ms sleep", "/sleep", kind="io", check=expect(b"slept")),
]}

CEILING_NOTE = {
    "/hello": 'nginx `return 200 "Hello, world!"`',
    "/echo16k": "nginx answering the same 16 KiB POST with a static 16 KiB file (body read and discarded)",
    "/stream1m": "nginx serving a static 1 MiB file (page cache, `sendfile on`)",
    None: "the thread limit: connections / 10 ms",
}


# ---------------------------------------------------------------------------------------------
# Processes

_ports = set()


def free_port():
    """A free port below the ephemeral range (32768 and up on Linux): a port the kernel might also
    hand to a client socket (wrk's, nginx's upstream connections) could be taken before the server
    binds it."""
    base = 20000 + (os.getpid() * 37) % 8000
    for port in range(base, 32000):
        if port in _ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def descendants(pids):
    """pids and all their descendants (from /proc)."""
    parent = {}
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += [c for c, pp in parent.items() if pp == p]
    return sorted(out)


def cpu_seconds(pids):
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            pass
    return total


def stop_process(proc, sig=signal.SIGTERM, timeout=20):
    """Stops a process started here (in its own session) and whatever it left in its group."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # stragglers of our own process group only
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=5)


def paths(build=ROOT / "target/release"):
    """(the nginx module, the nginx it is built for), from this build or the one in `build`
    (bench/memory.py uses it too)."""
    helper = build / "ngx-wsgi"
    if not helper.exists():
        sys.exit(f"{helper} is missing: cargo build --release")
    out = subprocess.run([str(helper), "paths"], capture_output=True, text=True, check=True).stdout
    d = dict(line.split(": ", 1) for line in out.splitlines())
    return d["module"], d["nginx"]


def wait_port(port, proc, what):
    """Waits until proc listens on port; exits if it does not (bench/memory.py uses it)."""
    try:
        wait_tcp(port, [proc], what)
    except RuntimeError as e:
        sys.exit(str(e))


class Ctx:
    """What servers share: the temp dir, the binaries, the bench venv. As a context manager (what
    bench/streams.py uses too): the temp dir goes at the end unless $BENCH_KEEP_TMP is set, and a
    RuntimeError ends the bench with its message."""

    def __init__(self, args):
        self.args = args
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-peers-bench-"))
        self.venv = pathlib.Path(sys.prefix)
        self.bin = pathlib.Path(sys.executable).parent
        self.module, self.nginx = paths()
        self.counter = 0

    def dir(self, name):
        self.counter += 1
        d = self.tmp / f"{self.counter:02d}-{name}"
        (d / "logs").mkdir(parents=True)
        return d

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        if kind is RuntimeError:
            sys.exit(f"bench failed: {error}")

    def popen(self, cmd, log, **kw):
        f = open(log, "ab")
        return subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)


def nginx_conf(prefix, body, workers=CORES, head="", connections=4096):
    user = "user root root;" if IS_ROOT else ""
    return f"""
{head}
{user}
daemon off;
worker_processes {workers};
error_log {prefix}/logs/error.log warn;
pid {prefix}/logs/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_buffer_size 64k;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
{body}
}}
"""


# ---------------------------------------------------------------------------------------------
# Servers. Each instance is one server at one thread count; `front` servers sit behind the front
# nginx, whose CPU is counted with theirs.

class Server:
    name = ""               # the --servers key and the row label
    threads = (4, 64)       # default threads per process: (CPU-bound workloads, 10 ms sleep)
    front = None            # None: wrk talks to the server; else the kind of nginx hop in front of it
    how = ""                # one line for the notes under the tables

    def __init__(self, ctx, threads):
        self.ctx, self.n = ctx, threads
        self.procs = []
        self.port = free_port()
        self.dir = ctx.dir(f"{self.name}-{threads}")

    command = None          # the peer's executable in the bench venv, checked before anything starts

    @classmethod
    def available(cls, ctx):
        """None, or why this server cannot run here."""
        if cls.command and not (ctx.bin / cls.command).exists():
            return f"{ctx.bin / cls.command} is missing: run bench/setup and bench/.venv/bin/python bench/run.py"
        return None

    def front_block(self, port):
        """The front nginx's server block for this server (listening on port), if fronted."""
        return ""

    def start(self):
        raise NotImplementedError

    def wait_ready(self):
        wait_tcp(self.port, self.procs, self.name)

    def pids(self):
        return descendants([p.pid for p in self.procs])

    def stop(self):
        for p in self.procs:
            stop_process(p)

    def log_tail(self):
        out = []
        for f in sorted(self.dir.rglob("*.log")):
            text = f.read_text(errors="replace").strip().splitlines()[-15:]
            if text:
                out.append(f"--- {f}\n" + "\n".join(text))
        return "\n".join(out)


def wait_tcp(port, procs, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what} exited with {p.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


class Module(Server):
    name = "module"
    threads = (2, 64)
    how = "nginx + ngx_http_wsgi_module, its own threads (`wsgi_max_threads N`), `wsgi_app apps.py:dispatch`"

    def start(self):
        body = f"""
  wsgi_python_home {self.ctx.venv};
  wsgi_max_threads {self.n};
  server {{
    listen 127.0.0.1:{self.port} reuseport;
    location / {{ wsgi_app {BENCH}/apps.py:dispatch; }}
  }}"""
        head = f"load_module {self.ctx.module};"
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_conf(self.dir, body, head=head))
        self.procs = [self.ctx.popen([self.ctx.nginx, "-p", self.dir, "-c", conf], self.dir / "logs/stdout.log")]


class Gunicorn(Server):
    name = "gunicorn"
    command = "gunicorn"
    threads = (2, 64)
    front = "proxy_pass"
    how = "gunicorn `-k gthread -w 2 --threads N` behind nginx `proxy_pass` (keep-alive upstream)"

    def front_block(self, port):
        return f"""
  upstream gunicorn_{self.n} {{ server 127.0.0.1:{self.port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://gunicorn_{self.n};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_max_temp_file_size 0;
    }}
  }}"""

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "gunicorn", "--chdir", BENCH, "-k", "gthread", "-w", CORES, "--threads", self.n,
             "-b", f"127.0.0.1:{self.port}", "--backlog", 1024, "--log-level", "warning", "--keep-alive", 60,
             "apps:dispatch"], self.dir / "logs/gunicorn.log")]


class UWSGI(Server):
    name = "uwsgi"
    command = "uwsgi"
    threads = (2, 64)
    front = "uwsgi_pass"
    how = "uWSGI `--processes 2 --threads N` behind nginx `uwsgi_pass` over a UNIX socket"

    def __init__(self, ctx, threads):
        super().__init__(ctx, threads)
        self.sock = self.dir / "uwsgi.sock"

    def front_block(self, port):
        params = "".join(f"      uwsgi_param {k} {v};\n" for k, v in [
            ("QUERY_STRING", "$query_string"), ("REQUEST_METHOD", "$request_method"),
            ("CONTENT_TYPE", "$content_type"), ("CONTENT_LENGTH", "$content_length"),
            ("REQUEST_URI", "$request_uri"), ("PATH_INFO", "$document_uri"), ("DOCUMENT_ROOT", "$document_root"),
            ("SERVER_PROTOCOL", "$server_protocol"), ("REQUEST_SCHEME", "$scheme"),
            ("REMOTE_ADDR", "$remote_addr"), ("REMOTE_PORT", "$remote_port"), ("SERVER_ADDR", "$server_addr"),
            ("SERVER_PORT", "$server_port"), ("SERVER_NAME", "$server_name")])
        return f"""
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
{params}      uwsgi_pass unix:{self.sock};
      uwsgi_buffer_size 64k;
      uwsgi_buffers 8 64k;
      uwsgi_max_temp_file_size 0;
    }}
  }}"""

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "uwsgi", "--master", "--processes", CORES, "--threads", self.n,
             "--socket", self.sock, "--listen", 1024, "--chdir", BENCH, "--pythonpath", BENCH,
             "--home", self.ctx.venv, "--module", "apps:dispatch", "--need-app", "--single-interpreter",
             "--die-on-term", "--disable-logging", "--buffer-size", 32768, "--thunder-lock"],
            self.dir / "logs/uwsgi.log")]

    def wait_ready(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"uwsgi exited with {self.procs[0].returncode}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.sock))
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("uwsgi did not listen")


class Granian(Server):
    name = "granian"
    command = "granian"
    threads = (2, 64)
    runtime_threads = 1
    how = "Granian `--interface wsgi --workers 2 --blocking-threads N --runtime-threads 1`"

    def start(self):
        self.procs = [self.ctx.popen(
            [self.ctx.bin / "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", self.port,
             "--workers", CORES, "--blocking-threads", self.n, "--runtime-threads", self.runtime_threads,
             "--http", "1", "--no-ws", "--backlog", 1024, "--log-level", "warning", "--working-dir", BENCH,
             "apps:dispatch"], self.dir / "logs/granian.log")]


class Cheroot(Server):
    name = "cheroot"
    threads = (4, 64)
    how = ("cheroot `wsgi.Server(numthreads=N)`, 2 processes forked by bench/cheroot_server.py, each binding "
           "the port with SO_REUSEPORT")

    @classmethod
    def available(cls, ctx):
        try:
            import cheroot  # noqa: F401
        except ImportError:
            return "cheroot is not installed: run bench/setup and bench/.venv/bin/python bench/run.py"
        return None

    def start(self):
        self.procs = [self.ctx.popen(
            [sys.executable, BENCH / "cheroot_server.py", "--port", self.port, "--processes", CORES,
             "--threads", self.n], self.dir / "logs/cheroot.log")]


class ApacheServer(Server):
    """Apache httpd (Debian's apache2) in the foreground with a generated config: event MPM,
    2 child processes of N threads. Subclasses give the module lines (LoadModule and directives)."""
    apache = "/usr/sbin/apache2"
    modules = "/usr/lib/apache2/modules"

    @classmethod
    def available(cls, ctx):
        return None if os.access(cls.apache, os.X_OK) else f"{cls.apache} is not installed (bench/setup)"

    def module_lines(self):
        raise NotImplementedError

    def start(self):
        n, d = self.n, self.dir
        user = "User www-data\nGroup www-data" if IS_ROOT else ""
        (d / "httpd.conf").write_text(f"""
ServerRoot {d}
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
PidFile {d}/logs/httpd.pid
DefaultRuntimeDir {d}/logs
ErrorLog {d}/logs/error.log
LogLevel warn
{user}
LoadModule mpm_event_module {self.modules}/mod_mpm_event.so
LoadModule authz_core_module {self.modules}/mod_authz_core.so
StartServers {CORES}
ServerLimit {CORES}
ThreadLimit {n}
ThreadsPerChild {n}
MaxRequestWorkers {CORES * n}
MinSpareThreads 1
MaxSpareThreads {CORES * n}
AsyncRequestWorkerFactor 64
MaxConnectionsPerChild 0
ListenBacklog 1024
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 60
{self.module_lines()}
""")
        if IS_ROOT:
            shutil.chown(d / "logs", "www-data", "www-data")
        self.procs = [self.ctx.popen([self.apache, "-d", d, "-f", d / "httpd.conf", "-DFOREGROUND"],
                                     d / "logs/stdout.log")]


class ModWsgi(ApacheServer):
    name = "mod_wsgi"
    threads = (32, 64)
    how = ("Apache event MPM, 2 children x `ThreadsPerChild N`, mod_wsgi embedded (no WSGIDaemonProcess), "
           "`WSGIApplicationGroup %{GLOBAL}`")

    @classmethod
    def available(cls, ctx):
        return super().available(ctx) or (None if os.path.exists(f"{cls.modules}/mod_wsgi.so") else
                                          "mod_wsgi is not installed (libapache2-mod-wsgi-py3; bench/setup)")

    def module_lines(self):
        return f"""
LoadModule wsgi_module {self.modules}/mod_wsgi.so
WSGIPythonHome {self.ctx.venv}
WSGIPythonPath {BENCH}
WSGIApplicationGroup %{{GLOBAL}}
WSGIScriptAlias / {BENCH}/apps.py
WSGICallableObject dispatch
<Directory {BENCH}>
  Require all granted
</Directory>
"""


class ApacheModule(ApacheServer):
    """This project's Apache httpd module (`target/release/libmod_ngx_wsgi.so`, built by
    `cargo build --release` with apache2-dev installed). $BENCH_APACHE_MODULE_CONF, when set, names
    a config fragment used instead of the lines below, with {bench} (this directory, holding
    apps.py), {venv} (the bench venv), {app} ({bench}/apps.py:dispatch) and {so} (the built module)
    filled in."""
    name = "apache-module"
    threads = (32, 64)
    how = ("Apache event MPM, 2 children x `ThreadsPerChild N`, this project's Apache module "
           "(`NgxWsgiApp apps.py`)")
    so = ROOT / "target/release/libmod_ngx_wsgi.so"

    @classmethod
    def available(cls, ctx):
        conf = os.environ.get("BENCH_APACHE_MODULE_CONF")
        if conf and not os.path.exists(conf):
            return f"BENCH_APACHE_MODULE_CONF={conf} does not exist"
        if not conf and not cls.so.exists():
            return f"{cls.so} is missing: cargo build --release (with apache2-dev installed)"
        return super().available(ctx)

    def module_lines(self):
        conf = os.environ.get("BENCH_APACHE_MODULE_CONF")
        text = pathlib.Path(conf).read_text() if conf else """
LoadModule ngx_wsgi_module {so}
NgxWsgiPythonHome {venv}
NgxWsgiApp {bench}/apps.py
<Directory {bench}>
  Require all granted
</Directory>
"""
        for key, value in [("{app}", f"{BENCH}/apps.py:dispatch"), ("{bench}", BENCH), ("{venv}", self.ctx.venv),
                           ("{so}", self.so)]:
            text = text.replace(key, str(value))     # not str.format: Apache's own %{...} stay as written
        return text


# The servers, in table order. Adding one: a Server subclass (an ApacheServer one for an Apache
# module), listed here.
SERVERS = {s.name: s for s in [Module, Granian, UWSGI, Gunicorn, ModWsgi, Cheroot, ApacheModule]}
# What runs without --servers: every server, and the Apache build of the module once built (or
# configured).
DEFAULT_SERVERS = [n for n in SERVERS if n != "apache-module" or ApacheModule.so.exists()
                   or os.environ.get("BENCH_APACHE_MODULE_CONF")]


class Front:
    """The front nginx: the ceiling (stock nginx, no module) and the nginx hop of proxied peers."""

    def __init__(self, ctx, fronted):
        self.ctx, self.fronted = ctx, fronted
        self.dir = ctx.dir("front")
        self.port = free_port()
        www = self.dir / "www"
        www.mkdir()
        (www / "echo16k").write_bytes(b"x" * ECHO_SIZE)
        (www / "stream1m").write_bytes(apps.CHUNK * apps.STREAM_CHUNKS)
        self.ports = {}
        blocks = []
        for inst in fronted:
            self.ports[inst] = free_port()
            blocks.append(inst.front_block(self.ports[inst]))
        body = f"""
  sendfile on;
  server {{
    listen 127.0.0.1:{self.port} reuseport;
    root {www};
    location = /hello {{ return 200 "Hello, world!"; }}
    location = /echo16k {{ error_page 405 =200 $uri; }}    # the static module answers POST with 405
    location = /stream1m {{ }}
    location = /stream1m-copy {{ alias {www}/stream1m; sendfile off; }}
  }}
{''.join(blocks)}"""
        conf = self.dir / "nginx.conf"
        conf.write_text(nginx_conf(self.dir, body))
        self.proc = ctx.popen([ctx.nginx, "-p", self.dir, "-c", conf], self.dir / "logs/stdout.log")

    def pids(self):
        return descendants([self.proc.pid])


# ---------------------------------------------------------------------------------------------
# Measuring

def request(port, workload, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if workload.post:
            conn.request("POST", workload.path, body=body,
                         headers={"Content-Type": "application/octet-stream"})
        else:
            conn.request("GET", workload.path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def verify(target, port, workload):
    """Raises unless the server answers the workload correctly (retrying while it boots)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if workload.post:
                sent = os.urandom(ECHO_SIZE)
                status, body = request(port, workload, sent)
                error = None if body == sent else f"echo returned {len(body)} B, not the {len(sent)} B sent"
            else:
                status, body = request(port, workload)
                error = workload.check(body)
            if status != 200:
                error = f"status {status}: {body[:200]!r}"
        except (OSError, http.client.HTTPException) as e:
            error = f"{type(e).__name__}: {e}"
        if error is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target} answers {workload.name} wrongly: {error}")
        time.sleep(0.5)


def verify_ceiling(port, path, size, post=False):
    status, body = request(port, Workload("ceiling", "", path, post=post), b"x" * ECHO_SIZE if post else None)
    if status != 200 or len(body) != size:
        raise RuntimeError(f"ceiling {path}: status {status}, {len(body)} B (expected {size})")


def wrk(port, workload_path, duration, connections, script=None):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{workload_path}"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)] if p99 else float("nan")
    errors = [m.group(0) for m in [re.search(r"Non-2xx or 3xx responses: \d+", out),
                                   re.search(r"Socket errors: .*", out)] if m]
    return rps, p99_ms, errors


class Cell:
    def __init__(self):
        self.rps, self.p99, self.cpu, self.errors = [], [], [], []

    def add(self, rps, p99, cpu, errors):
        self.rps.append(rps)
        self.p99.append(p99)
        self.cpu.append(cpu)
        self.errors += errors

    def med(self):
        return statistics.median(self.rps), statistics.median(self.p99), statistics.median(self.cpu)


def threads_for(args):
    """{server name: (cpu threads, io threads)} from the defaults and --threads."""
    out = {name: cls.threads for name, cls in SERVERS.items()}
    for item in filter(None, (args.threads or "").split(",")):
        name, _, spec = item.rpartition("=")
        cpu, _, io = spec.partition("/")
        for n in ([name] if name else list(out)):
            if n not in out:
                sys.exit(f"--threads: unknown server {n}")
            out[n] = (int(cpu), int(io or cpu))
    return out


PEERS = ["gunicorn", "uwsgi", "granian", "cheroot", "flask"]


def versions(ctx, names, packages=PEERS):
    nginx = subprocess.run([ctx.nginx, "-v"], capture_output=True, text=True).stderr.strip()
    out = [nginx.replace("nginx version: ", "")]
    for pkg in packages:
        try:
            out.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if "mod_wsgi" in names:
        v = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "apache2",
                            "libapache2-mod-wsgi-py3"], capture_output=True, text=True).stdout
        out += v.splitlines()
    out.append(f"Python {sys.version.split()[0]}")
    return ", ".join(out)


def run(ctx, args, plan, workloads, rounds, ceiling=True):
    """plan: list of (row key, server class, threads, [workloads]). Starts everything, verifies,
    measures `rounds` interleaved rounds; returns {(row key, workload): Cell}."""
    entries = [(key, cls(ctx, n), wls) for key, cls, n, wls in plan]
    instances = [inst for _, inst, _ in entries]
    front = None
    started = []
    try:
        for inst in instances:
            inst.start()
            started.append(inst)
        front = Front(ctx, [i for i in instances if i.front])
        wait_tcp(front.port, [front.proc], "front nginx")
        for inst in instances:
            try:
                inst.wait_ready()
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n{inst.log_tail()}")
        port = {inst: (front.ports[inst] if inst.front else inst.port) for inst in instances}

        # Correctness first: every server, every workload; a wrong answer stops the bench.
        if ceiling:
            verify_ceiling(front.port, "/hello", 13)
            verify_ceiling(front.port, "/echo16k", ECHO_SIZE, post=True)
            verify_ceiling(front.port, "/stream1m", apps.STREAM_SIZE)
            verify_ceiling(front.port, "/stream1m-copy", apps.STREAM_SIZE)
        for key, inst, wls in entries:
            for w in wls:
                try:
                    verify(key, port[inst], WORKLOADS[w])
                except RuntimeError as e:
                    raise RuntimeError(f"{e}\n{inst.log_tail()}")
        print(f"verified: {len(entries)} server instances answer their workloads correctly", file=sys.stderr)

        post = ctx.tmp / "post.lua"
        post.write_text(f'wrk.method = "POST"\nwrk.body = string.rep("x", {ECHO_SIZE})\n'
                        'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        # (row key, workload) -> (port, path, script, pids function)
        targets = {}
        for w in workloads:
            wl = WORKLOADS[w]
            if ceiling and wl.ceiling:
                targets[("ceiling", w)] = (front.port, wl.ceiling, post if wl.post else None, front.pids)
                if wl.reference:
                    targets[("reference", w)] = (front.port, wl.reference[1], None, front.pids)
            for key, inst, wls in entries:
                if w in wls:
                    pids = ((lambda i=inst: i.pids() + front.pids()) if inst.front else inst.pids)
                    targets[(key, w)] = (port[inst], wl.path, post if wl.post else None, pids)
        cells = {t: Cell() for t in targets}
        for (key, w), (p, path, script, _) in targets.items():       # warm-up
            wrk(p, path, 1, args.connections, script)
        rows = list(dict.fromkeys(k for k, _ in targets))
        for r in range(rounds):
            order = rows[r % len(rows):] + rows[:r % len(rows)]
            for w in workloads:
                for key in order:
                    if (key, w) not in targets:
                        continue
                    p, path, script, pids = targets[(key, w)]
                    procs = pids()
                    before, t0 = cpu_seconds(procs), time.monotonic()
                    rps, p99, errors = wrk(p, path, args.duration, args.connections, script)
                    wall = time.monotonic() - t0
                    cells[(key, w)].add(rps, p99, (cpu_seconds(procs) - before) / wall, errors)
                    print(f"round {r + 1}/{rounds} {w:6} {key:18} {rps:9.0f} req/s  p99 {p99:7.2f} ms",
                          file=sys.stderr)
        return cells
    finally:
        if front:
            stop_process(front.proc, signal.SIGQUIT)
        for inst in started:
            inst.stop()


def fmt_ms(v):
    return f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def report(ctx, args, cells, workloads, names, threads):
    limit = args.connections / SLEEP_SECONDS
    print(f"\n{CORES} cores; {CORES} processes per server; wrk -t2 -c{args.connections} -d{args.duration}s "
          f"--latency; median of {args.rounds} interleaved round(s); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{versions(ctx, names)}\n")
    print("Threads per process (CPU-bound workloads / 10 ms sleep): "
          + ", ".join(f"{n} {threads[n][0]}/{threads[n][1]}" for n in names) + "\n")
    ratios = {}
    for w in workloads:
        wl = WORKLOADS[w]
        ceil = cells[("ceiling", w)].med()[0] if ("ceiling", w) in cells else limit
        print(f"### {wl.label}\n\nceiling: {CEILING_NOTE[wl.ceiling]}\n")
        print("| server | threads | req/s | / ceiling | p99 ms | CPU |")
        print("|---|---|---|---|---|---|")
        rows = ([k for k in ("ceiling", "reference") if (k, w) in cells]
                + [n for n in names if (n, w) in cells])
        for n in rows:
            c = cells[(n, w)]
            rps, p99, cpu = c.med()
            ratios[(n, w)] = rps
            label = {"ceiling": "nginx (ceiling)", "reference": wl.reference and wl.reference[0]}.get(n, n)
            th = "-" if n in ("ceiling", "reference") else str(threads[n][1 if wl.kind == "io" else 0])
            flag = " (errors)" if c.errors else ""
            print(f"| {label} | {th} | {rps:.0f}{flag} | {rps / ceil:.2f} | {fmt_ms(p99)} | {cpu:.2f} |")
        if ("ceiling", w) not in cells:
            print(f"\n(ceiling = {limit:.0f} req/s: {args.connections} connections each waiting 10 ms)")
        print()
    peers = [n for n in names if n != "module"]
    if "module" in names and peers:
        print("### module req/s ÷ each peer's req/s\n")
        print("| workload | " + " | ".join(peers) + " |")
        print("|---|" + "---|" * len(peers))
        for w in workloads:
            m = ratios.get(("module", w))
            cols = [f"{m / ratios[(p, w)]:.2f}" if m and ratios.get((p, w)) else "-" for p in peers]
            print(f"| {WORKLOADS[w].label} | " + " | ".join(cols) + " |")
        print()
    print("CPU: the server's CPU seconds per wall second (2.00 = both cores), including the fronting nginx "
          "for proxied peers.")
    for n in names:
        print(f"- {n}: {SERVERS[n].how}")
    errs = [(k, c.errors) for k, c in cells.items() if c.errors]
    for (n, w), e in errs:
        print(f"- errors in {n}/{w}: {'; '.join(sorted(set(e)))}")


def curve(ctx, args, names, workloads, counts):
    plan = [(f"{n}@{c}", SERVERS[n], c, workloads) for n in names for c in counts]
    cells = {}
    for n in names:          # one server at a time, all its thread counts interleaved
        cells.update(run(ctx, args, [p for p in plan if p[1] is SERVERS[n]], workloads, args.rounds,
                         ceiling=False))
    print(f"\nthreads-per-process curve: req/s, wrk -t2 -c{args.connections} -d{args.duration}s, "
          f"median of {args.rounds}\n")
    for w in workloads:
        print(f"### {WORKLOADS[w].label}\n")
        print("| server | " + " | ".join(str(c) for c in counts) + " |")
        print("|---|" + "---|" * len(counts))
        for n in names:
            row = [cells[(f"{n}@{c}", w)] for c in counts]
            print(f"| {n} | " + " | ".join(f"{c.med()[0]:.0f}{'*' if c.errors else ''}" for c in row) + " |")
        print()
    errs = [(k, c.errors) for k, c in cells.items() if c.errors]
    if errs:
        print("\\* wrk saw errors:")
    for (k, w), e in errs:
        print(f"- {k}/{w}: {'; '.join(sorted(set(e)))}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; cells are medians (default 3)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--servers", default=",".join(DEFAULT_SERVERS), help=f"comma list of: {', '.join(SERVERS)}")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of: {', '.join(WORKLOADS)}")
    ap.add_argument("--threads", help="override threads per process: N, N/M, or NAME=N[/M],... "
                                      "(N for CPU-bound workloads, M for the sleep)")
    ap.add_argument("--curve", help="instead of the table: req/s per thread count, e.g. 1,2,4,8,16,32")
    args = ap.parse_args()
    names = [s for s in args.servers.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    for n in names:
        if n not in SERVERS:
            sys.exit(f"unknown server {n}; known: {', '.join(SERVERS)}")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}; known: {', '.join(WORKLOADS)}")
    if "flask" in workloads and apps.flask_app is None:
        sys.exit("Flask is not installed: run bench/setup, then bench/.venv/bin/python bench/run.py")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (bench/setup)")
    threads = threads_for(args)
    with Ctx(args) as ctx:
        for n in names:
            why = SERVERS[n].available(ctx)
            if why:
                sys.exit(f"{n}: {why}")
        if args.curve:
            curve(ctx, args, names, workloads, [int(c) for c in args.curve.split(",")])
            return
        plan = {}
        for n in names:
            for w in workloads:
                t = threads[n][1 if WORKLOADS[w].kind == "io" else 0]
                plan.setdefault((n, t), []).append(w)
        # Row key = server name: a server's CPU and sleep thread counts never serve the same workload.
        cells = run(ctx, args, [(n, SERVERS[n], t, wls) for (n, t), wls in plan.items()], workloads, args.rounds)
        report(ctx, args, cells, workloads, names, threads)


if __name__ == "__main__":
    main()
