"""Differential test: Flask, Django, Bottle and Falcon answer the same requests with the same
status, headers and body under the module (nginx and Apache) and under gunicorn."""
import json
import pathlib
import subprocess
import sys

import pytest
import requests

from conftest import APPS, free_port, route, stop_peers, wait_for_peer

FRAMEWORKS = APPS / "frameworks"
# Hop-by-hop and per-server headers; everything else the app sent must match.
SERVER_HEADERS = {"date", "server", "connection", "keep-alive", "transfer-encoding"}


def requests_for(framework):
    slash = "/" if framework == "django" else ""
    return [
        ("GET", "/", {}, None),
        ("GET", f"/hello/w%C3%B6rld{slash}?q=caf%C3%A9+au+lait", {}, None),
        ("POST", f"/echo{slash}", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1&b=two+words&c=%C3%A9"),
        ("POST", f"/echo{slash}", {"Content-Type": "application/json"}, json.dumps({"x": [1, 2]}).encode()),
        ("PUT" if framework != "django" else "POST", f"/echo{slash}", {"Content-Type": "text/plain"}, b"x" * 20000),
        ("GET", f"/redirect{slash}", {}, None),
        ("GET", f"/cookies{slash}", {"Cookie": "in=1; other=2"}, None),
        ("GET", f"/teapot{slash}", {}, None),
        ("GET", "/no/such/page", {}, None),
        ("HEAD", "/", {}, None),
        ("GET", f"/stream{slash}", {}, None),
    ]


@pytest.fixture(scope="module")
def gunicorn_servers():
    procs = {}
    for framework in ["flask", "django", "bottle", "falcon"]:
        port = free_port()
        proc = subprocess.Popen(
            [str(pathlib.Path(sys.executable).parent / "gunicorn"), "--chdir", str(FRAMEWORKS), "-k", "gthread",
             "--threads", "4", "-w", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
             f"{framework}_app:application"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs[framework] = (proc, port)
    try:
        for framework, (proc, port) in procs.items():
            wait_for_peer(port, proc, f"gunicorn for {framework}")
        yield {f: port for f, (_, port) in procs.items()}
    finally:
        stop_peers([proc for proc, _ in procs.values()])


@pytest.fixture(scope="module")
def module_servers(wsgi_factory):
    return {f: wsgi_factory([route("/", FRAMEWORKS / f"{f}_app.py")]).start().port
            for f in ["flask", "django", "bottle", "falcon"]}


def fetch(port, method, path, headers, body):
    r = requests.request(method, f"http://127.0.0.1:{port}{path}", headers={"Host": "app.example", **headers},
                         data=body, allow_redirects=False, timeout=20)
    names = {name.lower() for name in r.raw.headers}
    headers = {name: sorted(r.raw.headers.getlist(name)) for name in names - SERVER_HEADERS}
    if "content-length" in headers and r.headers.get("Transfer-Encoding") is None:
        headers["content-length"] = [str(len(r.content))] if method != "HEAD" else headers["content-length"]
    return r.status_code, headers, r.content


@pytest.mark.parametrize("framework", ["flask", "django", "bottle", "falcon"])
def test_same_answers_as_gunicorn(framework, gunicorn_servers, module_servers):
    statuses = []
    for method, path, headers, body in requests_for(framework):
        ours = fetch(module_servers[framework], method, path, headers, body)
        theirs = fetch(gunicorn_servers[framework], method, path, headers, body)
        if "content-length" in ours[1] and "content-length" not in theirs[1] and theirs[2] == ours[2]:
            # We announce the length of a fully known body where gunicorn chunks it; same bytes.
            ours[1].pop("content-length")
        assert ours == theirs, f"{framework}: {method} {path}"
        assert ours[0] != 500, f"{framework}: {method} {path} failed"
        statuses.append(ours[0])
        if method == "GET" and path.startswith("/stream"):
            assert ours[2] == b"".join(b"%d %s\n" % (i, path.split("?")[0].encode()) for i in range(5))
        if path.startswith("/hello"):
            answer = json.loads(ours[2])
            assert (answer["name"], answer["q"]) == ("w\u00f6rld", "caf\u00e9 au lait")
    assert statuses[5] in (302, 303)  # Bottle answers HTTP/1.1 redirects with 303
    assert statuses[:5] + statuses[6:9] + statuses[10:] == [200, 200, 200, 200, 200, 200, 418, 404, 200]
