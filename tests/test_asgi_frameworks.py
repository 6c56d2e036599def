"""Differential test: Starlette, FastAPI, Django (its ASGI handler, async and sync views),
Litestar and Quart apps
answer the same requests with the same status, headers and body under `asgi_app` and under
uvicorn, mounted at the root and under a prefix (nginx's `location /api/`, uvicorn's
`--root-path /api`)."""
import email.utils
import json
import socket
import subprocess
import sys

import pytest
import requests

from conftest import (APPS, FORWARDED_SCHEME, asgi_location, free_port, read_until, stop_peers, wait_for,
                      wait_for_peer)

FRAMEWORKS = APPS / "asgi_frameworks"
SERVER_HEADERS = {"date", "server", "connection", "keep-alive", "transfer-encoding"}
# Headers an app computes from the clock: the two servers answer a second or so apart.
CLOCK_HEADERS = {"expires"}

REQUESTS = {
    "starlette": [
        ("GET", "/", {}, None),
        ("GET", "/hello/w%C3%B6rld?q=caf%C3%A9+au+lait", {}, None),
        ("POST", "/echo", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1&b=two+words&c=%C3%A9"),
        ("POST", "/echo", {"Content-Type": "application/json"}, json.dumps({"x": [1, 2]}).encode()),
        ("PUT", "/echo", {"Content-Type": "text/plain"}, b"x" * 200_000),
        ("GET", "/redirect", {}, None),
        ("GET", "/cookies", {"Cookie": "in=1; other=2"}, None),
        ("GET", "/teapot", {}, None),
        ("GET", "/no/such/page", {}, None),
        ("HEAD", "/", {}, None),
        ("GET", "/stream", {}, None),
        ("HEAD", "/stream", {}, None),
        ("GET", "/state", {}, None),
        ("GET", "/background", {}, None),
        ("GET", "/empty", {}, None),
        ("GET", "/sub/where", {}, None),
        ("GET", "/file", {}, None),
        ("GET", "/file", {"Range": "bytes=5-14"}, None),
        ("DELETE", "/echo", {}, None),
    ],
    "fastapi": [
        ("GET", "/", {}, None),
        ("GET", "/hello/w%C3%B6rld?q=caf%C3%A9", {}, None),
        ("POST", "/items", {"Content-Type": "application/json"}, json.dumps({"name": "x", "price": 2.5, "tags": ["a"]}).encode()),
        ("POST", "/items", {"Content-Type": "application/json"}, b'{"name": 1}'),
        ("POST", "/items", {"Content-Type": "application/json"}, b"not json"),
        ("POST", "/form", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1&b=%C3%A9"),
        ("PUT", "/raw", {"Content-Type": "application/octet-stream"}, b"r" * 300_000),
        ("GET", "/header", {"X-Token": "secret"}, None),
        ("GET", "/header", {}, None),
        ("GET", "/missing", {}, None),
        ("GET", "/redirect", {}, None),
        ("GET", "/stream", {}, None),
        ("HEAD", "/stream", {}, None),
        ("GET", "/started", {}, None),
        ("GET", "/sync", {}, None),
        ("HEAD", "/", {}, None),
        ("GET", "/openapi.json", {}, None),
        ("GET", "/docs", {}, None),
    ],
    "django": [
        ("GET", "/", {}, None),
        ("GET", "/sync/", {}, None),
        ("POST", "/sync/", {}, b""),
        ("GET", "/hello/w%C3%B6rld/?q=caf%C3%A9+au+lait", {}, None),
        ("GET", "/hello/there", {}, None),
        ("POST", "/echo/", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1&b=two+words&c=%C3%A9"),
        ("PUT", "/echo/", {"Content-Type": "application/octet-stream"}, b"d" * 300_000),
        ("GET", "/redirect/", {}, None),
        ("GET", "/cookies/", {"Cookie": "in=1; other=2"}, None),
        ("GET", "/teapot/", {}, None),
        ("GET", "/no/such/page/", {}, None),
        ("HEAD", "/", {}, None),
        ("GET", "/stream/", {}, None),
        ("HEAD", "/stream/", {}, None),
        ("GET", "/sync-stream/", {}, None),
        ("HEAD", "/sync-stream/", {}, None),
        ("GET", "/headers/", {"X-Token": "secret", "User-Agent": "differential/1"}, None),
        ("GET", "/file/", {}, None),
        ("GET", "/empty/", {}, None),
        ("GET", "/raises/", {}, None),
    ],
    "litestar": [
        ("GET", "/", {}, None),
        ("GET", "/hello/w%C3%B6rld?q=caf%C3%A9+au+lait", {}, None),
        ("POST", "/items", {"Content-Type": "application/json"}, json.dumps({"name": "x", "price": 2.5, "tags": ["b", "a"]}).encode()),
        ("POST", "/items", {"Content-Type": "application/json"}, b'{"name": 1}'),
        ("POST", "/items", {"Content-Type": "application/json"}, b"not json"),
        ("POST", "/form", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1&b=%C3%A9"),
        ("PUT", "/raw", {"Content-Type": "application/octet-stream"}, b"r" * 300_000),
        ("GET", "/redirect", {}, None),
        ("GET", "/cookies", {"Cookie": "in=1; other=2"}, None),
        ("GET", "/teapot", {}, None),
        ("GET", "/secret", {"X-Token": "secret"}, None),
        ("GET", "/secret", {}, None),
        ("GET", "/missing", {}, None),
        ("HEAD", "/", {}, None),
        ("GET", "/stream", {}, None),
        ("GET", "/state", {}, None),
        ("GET", "/file", {}, None),
        ("GET", "/sync", {}, None),
        ("DELETE", "/", {}, None),
    ],
    "quart": [
        ("GET", "/", {}, None),
        ("GET", "/hello/w%C3%B6rld?q=caf%C3%A9+au+lait", {}, None),
        ("POST", "/echo", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1&b=two+words&c=%C3%A9"),
        ("POST", "/echo", {"Content-Type": "application/json"}, json.dumps({"x": [1, 2]}).encode()),
        ("PUT", "/echo", {"Content-Type": "application/octet-stream"}, b"q" * 300_000),
        ("GET", "/redirect", {}, None),
        ("GET", "/cookies", {"Cookie": "in=1; other=2"}, None),
        ("GET", "/teapot", {}, None),
        ("GET", "/no/such/page", {}, None),
        ("HEAD", "/", {}, None),
        ("GET", "/stream", {}, None),
        ("GET", "/state", {}, None),
        ("GET", "/file", {}, None),
        ("DELETE", "/", {}, None),
    ],
}
# The ASGI callable of each framework's file, and the answers that are 500s on purpose.
CALLABLES = {"starlette": "app", "fastapi": "app", "django": "application", "litestar": "app", "quart": "app"}
DELIBERATE_500 = {"/raises/"}


@pytest.fixture(scope="module")
def uvicorn_servers():
    procs = {}
    for framework in REQUESTS:
        for mount in ("", "/api"):
            port = free_port()
            argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(FRAMEWORKS), "--port", str(port),
                    "--log-level", "warning", "--no-access-log", f"{framework}_app:{CALLABLES[framework]}"]
            if mount:
                argv += ["--root-path", mount]
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs[(framework, mount)] = (proc, port)
    try:
        for key, (proc, port) in procs.items():
            wait_for_peer(port, proc, f"uvicorn {key}")
        yield {key: port for key, (_, port) in procs.items()}
    finally:
        stop_peers([proc for proc, _ in procs.values()])


@pytest.fixture(scope="module")
def module_server(nginx_factory):
    servers = {}
    for framework, callable_name in CALLABLES.items():
        locations = "".join(asgi_location(path, f"{FRAMEWORKS}/{framework}_app.py:{callable_name}")
                            for path in ("/", "/api/"))
        # With pathsend, as a deployment that wants nginx to send FileResponse's files has it.
        servers[framework] = nginx_factory(locations, http_extra="asgi_pathsend on;").start()
    return servers


def fetch(port, method, path, headers, body):
    r = requests.request(method, f"http://127.0.0.1:{port}{path}", headers={"Host": "app.example", **headers},
                         data=body, allow_redirects=False, timeout=20)
    names = {name.lower() for name in r.raw.headers}
    headers = {name: sorted(r.raw.headers.getlist(name)) for name in names - SERVER_HEADERS}
    if r.status_code == 204:
        # RFC 9110 8.6: no Content-Length in a 204. Django sets one (0); uvicorn passes it on,
        # nginx leaves it out.
        headers.pop("content-length", None)
    if "allow" in headers:
        # Starlette lists the methods of a set: their order follows each process's hash seed.
        headers["allow"] = sorted(", ".join(headers["allow"]).split(", "))
    return r.status_code, headers, r.content


def assert_same_moment(ours, theirs, what):
    """Compares the clock-derived headers within a few seconds, then drops them from both."""
    for name in CLOCK_HEADERS & (ours.keys() | theirs.keys()):
        assert name in ours and name in theirs, f"{what}: {name} in one answer only"
        moments = [[email.utils.parsedate_to_datetime(v).timestamp() for v in h.pop(name)] for h in (ours, theirs)]
        assert len(moments[0]) == len(moments[1]), f"{what}: {name}"
        assert all(abs(a - b) <= 5 for a, b in zip(*moments)), f"{what}: {name} {moments}"


@pytest.mark.parametrize("framework", list(REQUESTS))
@pytest.mark.parametrize("mount", ["", "/api"])
def test_same_answers_as_uvicorn(framework, mount, uvicorn_servers, module_server):
    ours_port = module_server[framework].port
    theirs_port = uvicorn_servers[(framework, mount)]
    statuses = []
    for method, path, headers, body in REQUESTS[framework]:
        ours = fetch(ours_port, method, mount + path, headers, body)
        theirs = fetch(theirs_port, method, path, headers, body)
        assert_same_moment(ours[1], theirs[1], f"{framework}: {method} {mount}{path}")
        assert ours == theirs, f"{framework}: {method} {mount}{path}"
        if path not in DELIBERATE_500:
            statuses.append(ours[0])
    assert 500 not in statuses, statuses
    log = module_server[framework].error_log()
    if framework == "django":
        # Django answers its own 500 and logs the exception through `logging` (django.request),
        # which reaches nginx's error log: that one traceback, and no other.
        deliberate = log.count("LookupError: the differential test's deliberate failure")
        assert deliberate >= 1 and log.count("Traceback") == deliberate, log
    else:
        assert "Traceback" not in log


@pytest.fixture(scope="module")
def balanced_module_server(nginx_factory):
    """The module behind a balancer that ends TLS (as uvicorn's default --proxy-headers trusts
    127.0.0.1's X-Forwarded-Proto, `wsgi_scheme` from a map that trusts it)."""
    return {
        framework: nginx_factory(
            asgi_location("/", f"{FRAMEWORKS}/{framework}_app.py:{callable_name}"),
            http_extra=FORWARDED_SCHEME, server_extra="wsgi_scheme $app_scheme;").start()
        for framework, callable_name in CALLABLES.items()
    }


@pytest.mark.parametrize("framework", list(REQUESTS))
def test_urls_and_redirects_behind_a_tls_balancer_as_under_uvicorn(framework, uvicorn_servers,
                                                                 balanced_module_server):
    wanted = [r for r in REQUESTS[framework] if r[1].startswith(("/hello", "/redirect"))]
    assert wanted
    for proto in ("https", "http"):
        for method, path, headers, body in wanted:
            headers = {**headers, "X-Forwarded-Proto": proto}
            ours = fetch(balanced_module_server[framework].port, method, path, headers, body)
            theirs = fetch(uvicorn_servers[(framework, "")], method, path, headers, body)
            assert ours == theirs, f"{framework}: {method} {path} from a balancer ({proto})"
    # What the apps built from the scheme.
    if framework in ("starlette", "fastapi"):
        answer = requests.get(f"http://127.0.0.1:{balanced_module_server[framework].port}/hello/x",
                              headers={"Host": "app.example", "X-Forwarded-Proto": "https"}, timeout=10).json()
        assert answer["url"] == "https://app.example/hello/x"


def test_urls_carry_the_mount(module_server):
    port = module_server["starlette"].port
    answer = requests.get(f"http://127.0.0.1:{port}/api/hello/x", headers={"Host": "app.example"}, timeout=10).json()
    assert answer["url"] == "http://app.example/api/hello/x"
    assert answer["for"] == "http://app.example/api/hello/x"
    assert answer["root_path"] == "/api"
    sub = requests.get(f"http://127.0.0.1:{port}/api/sub/where", timeout=10).text
    assert sub == "/api/sub/where /api/sub"


def test_an_idle_event_stream_ends_when_its_client_goes(module_server):
    # Starlette's StreamingResponse watches receive() for http.disconnect when the server says
    # spec_version 2.3 (as uvicorn and Granian do); at 2.4 it would learn of the client's going
    # only from its next send, an hour later here.
    port = module_server["starlette"].port
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /feed?key=idle HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(s, b"data: first")
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/ended?key=idle", timeout=10).json(),
             what="the stream's generator to end")


def test_a_chunked_multipart_form_reaches_django(module_server):
    # nginx read the body whole before the app ran: it comes with its length, as behind
    # proxy_pass. Django's multipart parser reads nothing of a body without one (its fields and
    # files were empty).
    form = (b'--X\r\nContent-Disposition: form-data; name="a"\r\n\r\none\r\n'
            b'--X\r\nContent-Disposition: form-data; name="f"; filename="f.txt"\r\n\r\nthe file\r\n--X--\r\n')
    r = requests.post(f"http://127.0.0.1:{module_server['django'].port}/form/", data=iter([form]), timeout=20,
                      headers={"Host": "app.example", "Content-Type": "multipart/form-data; boundary=X"})
    assert r.status_code == 200 and r.json() == {"post": {"a": "one"}, "files": {"f": "the file"}}, r.text
