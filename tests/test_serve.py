"""`ngx-wsgi serve`: one command serves an app through the built nginx; --reload follows edits."""
import os
import signal
import socket
import subprocess
import time

import requests

from conftest import RELEASE, free_port

APP = '''
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"VERSION"]
'''


def wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.1)
    return False


def readable_dir():
    """A directory nginx's workers can read when the tests run as root (serve never runs them as
    root: they are nobody then)."""
    import pathlib
    import tempfile
    base = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-serve-test-"))
    base.chmod(0o755)
    return base


def serve_app(name, source, env=None):
    """Writes `source` as the app file `name` and starts `ngx-wsgi serve` on it (its own session,
    stderr a pipe); returns the process and the app's URL."""
    app = readable_dir() / name
    app.write_text(source)
    app.chmod(0o644)
    port = free_port()
    proc = subprocess.Popen([str(RELEASE / "ngx-wsgi"), "serve", str(app), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env)
    return proc, f"http://127.0.0.1:{port}/"


def test_serve_with_reload_follows_edits(built):
    app = readable_dir() / "site" / "app.py"
    app.parent.mkdir()
    app.write_text(APP.replace("VERSION", "v1"))
    port = free_port()
    err_file = app.parent / "serve.err"
    with open(err_file, "wb") as err_out:
        proc = subprocess.Popen([str(RELEASE / "ngx-wsgi"), "serve", str(app), "--port", str(port),
                                 "--reload"], stdout=subprocess.DEVNULL, stderr=err_out,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert wait_for(lambda: requests.get(url, timeout=2).text == "v1"), "serve did not come up"
        app.write_text(APP.replace("VERSION", "v2"))
        assert wait_for(lambda: requests.get(url, timeout=2).text == "v2"), "edit not picked up"
        app.write_text("def application(environ, start_response)\n")  # a syntax error
        assert wait_for(lambda: "SyntaxError" in err_file.read_text(errors="replace")), "the broken edit was seen"
        assert requests.get(url, timeout=2).text == "v2", "a broken edit is refused; v2 keeps serving"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5), timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err_file.read_text(errors="replace")
    assert "changed; reloading" in err and "SyntaxError" in err


def test_serve_quotes_paths_and_never_runs_workers_as_root(built):
    site = readable_dir() / 'a site; user root;"x'
    site.mkdir()
    site.chmod(0o755)
    app = site / "app.py"
    app.write_text(APP.replace("VERSION", "quoted"))
    app.chmod(0o644)
    port = free_port()
    proc = subprocess.Popen([str(RELEASE / "ngx-wsgi"), "serve", str(app), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert wait_for(lambda: requests.get(url, timeout=2).text == "quoted"), proc.stderr.read1(65536)
        master = _children(proc.pid)[0]
        workers = _children(master)
        assert workers
        for pid in workers:
            uid = int(open(f"/proc/{pid}/status").read().split("\nUid:\t")[1].split()[0])
            assert uid != 0 or os.geteuid() != 0, "workers never run as root"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _children(parent):
    """The processes whose parent is `parent` (serve's nginx master, the master's workers)."""
    def parent_of(pid):
        try:
            return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return None
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and parent_of(int(p)) == parent]


SLOW_APP = '''
import time

def application(environ, start_response):
    seconds, _, started = environ["QUERY_STRING"].partition("&")
    if started:
        open(started, "w").close()
    time.sleep(float(seconds or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
'''


def test_serve_stops_gracefully_on_sigterm_and_removes_its_prefix(built):
    # A container's or a service's stop (SIGTERM to serve alone): the request in flight ends,
    # as nginx's graceful stop (SIGQUIT) lets it; then the private prefix is gone.
    proc, url = serve_app("slow_app.py", SLOW_APP)
    try:
        assert wait_for(lambda: requests.get(url, timeout=2).text == "done"), proc.stderr.read1(65536)
        master = _children(proc.pid)[0]
        # nginx: master process /path/to/nginx -p PREFIX -c PREFIX/nginx.conf
        args = open(f"/proc/{master}/cmdline").read().replace("\0", " ").split()
        prefix = args[args.index("-p") + 1]
        assert os.path.isfile(os.path.join(prefix, "nginx.conf"))
        import concurrent.futures
        marks = readable_dir()
        marks.chmod(0o777)
        started = marks / "started"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(requests.get, f"{url}?2&{started}", timeout=30)
            assert wait_for(started.exists), "the request is in the app"
            proc.send_signal(signal.SIGTERM)
            r = slow.result()
        assert r.status_code == 200 and r.text == "done"
        assert proc.wait(timeout=30) == 0
        assert not os.path.exists(prefix)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"asgi " + scope["path"].encode()})
'''


def test_serve_an_asgi_app(built):
    app = readable_dir() / "main.py"
    app.write_text(ASGI_APP)
    app.chmod(0o644)
    port = free_port()
    proc = subprocess.Popen([str(RELEASE / "ngx-wsgi"), "serve", f"{app}:app", "--asgi", "--loop", "asyncio",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/x/y"
    try:
        assert wait_for(lambda: requests.get(url, timeout=2).text == "asgi /x/y"), proc.stderr.read1(65536)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)


ENV_APP = '''
import os

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.environ.get('NGX_WSGI_SERVE_SETTING')} {bool(os.environ.get('PATH'))}".encode()]
'''


def test_serve_passes_its_environment_to_the_app(built):
    # As uvicorn and gunicorn do: settings in the environment, and PATH for the app's programs.
    proc, url = serve_app("env_app.py", ENV_APP, env={**os.environ, "NGX_WSGI_SERVE_SETTING": "from the shell"})
    try:
        assert wait_for(lambda: requests.get(url, timeout=2).text == "from the shell True"), proc.stderr.read1(65536)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)


def test_serve_refuses_a_loop_without_asgi(built):
    out = subprocess.run([str(RELEASE / "ngx-wsgi"), "serve", "app.py", "--loop", "uvloop"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode != 0 and "--loop is for ASGI apps: add --asgi" in out.stderr
    out = subprocess.run([str(RELEASE / "ngx-wsgi"), "serve", "app.py", "--asgi", "--loop", "trio"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode != 0 and "--loop trio: asyncio or uvloop" in out.stderr


ECHO_APP = '''
def application(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]
'''


def test_serve_keeps_request_bodies_up_to_128k_out_of_temp_files(built):
    """nginx's default body buffer (8 KiB) would write every larger body to a temp file (logged
    at warn level, which serve's `error_log stderr info` shows)."""
    app = readable_dir() / "echo.py"
    app.write_text(ECHO_APP)
    app.chmod(0o644)
    port = free_port()
    proc = subprocess.Popen([str(RELEASE / "ngx-wsgi"), "serve", str(app), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    bodies = [os.urandom(n) for n in (16 * 1024, 100 * 1024, 200 * 1024)]
    try:
        assert wait_for(lambda: requests.post(url, data=b"x", timeout=2).content == b"x")
        for body in bodies:
            assert requests.post(url, data=body, timeout=10).content == body
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    log = proc.stderr.read().decode(errors="replace")
    # 16 KiB and 100 KiB stay in memory; 200 KiB, past the buffer, goes to a temp file as before.
    assert log.count("client request body is buffered to a temporary file") == 1, log[-4000:]
