"""`ngx-wsgi from-unit`: NGINX Unit configurations translated, then served by a real nginx with the
module, answering as Unit's documented semantics say (routes in order, share, prefix, targets,
environment, limits); and what cannot be translated is named, with exit status 2."""

import grp
import json
import os
import pathlib
import pwd
import subprocess
import sys

import pytest
import requests

from conftest import APPS, RELEASE, Nginx, free_port, python_home, start_server, wait_for

UNIT = APPS / "unit"
TOOL = str(RELEASE / "ngx-wsgi")


def from_unit(tmp_path, config, *args):
    """Runs the tool on `config` (a dict, or text as it is)."""
    source = tmp_path / "unit.json"
    source.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    return subprocess.run([TOOL, "from-unit", str(source), *args], capture_output=True, text=True,
                          timeout=60)


class Translated(Nginx):
    """nginx running the tool's output as it is; the test's own settings (foreground, pid and
    log paths, root workers) come on the command line with -g, so the file stays the tool's."""

    def __init__(self, built, conf_text, port):
        self.module, self.binary = built
        self.prefix = pathlib.Path(__import__("tempfile").mkdtemp(prefix="ngx-wsgi-from-unit-"))
        (self.prefix / "logs").mkdir()
        self.port = port
        self.proc = None
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(conf_text)
        globals_ = f"daemon off; pid {self.prefix}/logs/nginx.pid; error_log {self.prefix}/logs/error.log info;"
        if os.geteuid() == 0 and "\nuser " not in conf_text:
            globals_ += " user root root;"
        self.globals = globals_

    def argv(self, *args):
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-g", self.globals, *args]

    def run(self, *args):
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=60)

    def start(self):
        return start_server(self, "nginx", self.argv())


@pytest.fixture
def serve(built):
    started = []

    def make(conf_text, port):
        server = Translated(built, conf_text, port)
        check = server.run("-t")
        assert check.returncode == 0, check.stderr + "\n" + conf_text
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.stop()


def home():
    return {"home": python_home()} if python_home() else {}


def test_django_wsgi_app_with_a_static_share(tmp_path, serve):
    port = free_port()
    site = UNIT / "djangosite"
    config = {
        "listeners": {"*:80": {"pass": "routes"}},
        "routes": [
            {"match": {"uri": "/static/*"}, "action": {"share": f"{site}$uri"}},
            {"action": {"pass": "applications/django"}},
        ],
        "applications": {
            "django": {"type": "python 3", "path": str(site), "module": "mysite.wsgi",
                       "environment": {"DJANGO_SETTINGS_MODULE": "mysite.settings",
                                       "SITE_NAME": "from unit"}, **home()},
        },
    }
    result = from_unit(tmp_path, config, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    conf = result.stdout
    # No "protocol": told from mysite/wsgi.py, as Unit tells it when it loads the app.
    assert "wsgi_app mysite.wsgi:application;" in conf
    assert "# WSGI (Unit detects it; told here from `application = get_wsgi_application()`" in conf
    server = serve(conf, port)

    css = requests.get(server.url("/static/css/site.css"))
    assert css.status_code == 200
    assert css.text == (site / "static/css/site.css").read_text()
    assert css.headers["Content-Type"] == "text/css"
    # A directory serves its index.html, as Unit's share does.
    index = requests.get(server.url("/static/"))
    assert (index.status_code, index.text) == (200, "<p>static index</p>\n")
    # Unit's share answers 404 for a missing file and never falls to the app (no fallback).
    assert requests.get(server.url("/static/missing.css")).status_code == 404

    page = requests.post(server.url("/blog/post/1?x=1"), data=b"hello")
    assert page.status_code == 200
    assert page.json() == {"path": "/blog/post/1", "script_name": "", "path_info": "/blog/post/1",
                           "method": "POST", "site": "from unit", "body": "hello"}


def test_fastapi_asgi_app_with_a_prefix(tmp_path, serve):
    port = free_port()
    config = {
        "listeners": {f"127.0.0.1:{port}": {"pass": "routes"}},
        "routes": [
            {"match": {"uri": ["/api/*", "/api"]}, "action": {"pass": "applications/fastapi"}},
            {"action": {"return": 404}},
        ],
        "applications": {
            "fastapi": {"type": "python 3.11", "path": str(UNIT / "fastapi_site"), "module": "main",
                        "callable": "app", "prefix": "/api", "limits": {"timeout": 1}, **home()},
        },
        "settings": {"http": {"body_buffer_size": 65536, "body_temp_path": str(tmp_path / "body temp"),
                              "websocket": {"read_timeout": 90, "keepalive_interval": 20}}},
    }
    result = from_unit(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert "asgi_app main:app;" in result.stdout
    assert "asgi_websocket_idle_timeout 90s;" in result.stdout
    assert "asgi_websocket_ping_interval 20s;" in result.stdout
    assert "wsgi_mount /api;" in result.stdout
    assert "wsgi_read_timeout 1s;" in result.stdout
    server = serve(result.stdout, port)

    # Unit's ASGI scope under a prefix: root_path is the prefix, path the whole path.
    item = requests.get(server.url("/api/items/7"))
    assert item.status_code == 200
    assert item.json() == {"item": 7, "path": "/api/items/7", "root_path": "/api",
                           "url": f"http://127.0.0.1:{port}/api/items/7"}
    echo = requests.post(server.url("/api/echo"), data=b"payload")
    assert echo.json() == {"body": "payload"}
    # body_buffer_size: 40 KB stays in memory, 200 KB goes to a temp file in body_temp_path.
    for size in (40_000, 200_000):
        echo = requests.post(server.url("/api/echo"), data=b"b" * size)
        assert echo.json() == {"body": "b" * size}
    assert (tmp_path / "body temp").is_dir()
    log = (server.prefix / "logs/error.log").read_text()
    assert log.count("client request body is buffered to a temporary file") == 1, log[-3000:]
    assert requests.get(server.url("/items/7")).status_code == 404
    # limits.timeout: the task is cancelled and the client told (504 here, 503 under Unit).
    assert requests.get(server.url("/api/slow"), timeout=30).status_code == 504
    assert requests.get(server.url("/api/items/8")).json()["item"] == 8


def test_targets_routed_by_uri_in_step_order(tmp_path, serve):
    port = free_port()
    config = {
        "listeners": {"*:8000": {"pass": "routes"}},
        "routes": [
            # Before the /back/* step: in Unit the first matching step wins, whatever its length.
            {"match": {"uri": "/back/teapot"}, "action": {"return": 418}},
            {"match": {"uri": "/back/*", "arguments": {"v": "2"}},
             "action": {"pass": "applications/site/back", "response_headers": {"X-Route": "back"}}},
            {"action": {"pass": "applications/site/front"}},
        ],
        "applications": {
            "site": {"type": "python", "path": str(UNIT / "targets"), "protocol": "wsgi", **home(),
                     "targets": {"front": {"module": "front", "callable": "app", "prefix": "/front"},
                                 "back": {"module": "back", "prefix": "/back"}}},
        },
    }
    result = from_unit(tmp_path, config, "--listen", f"*:8000=127.0.0.1:{port}")
    # An app's own field of the name would stay beside nginx's added one: named.
    assert result.returncode == 2
    assert result.stderr.startswith(
        "ngx-wsgi from-unit: not translated: routes/1/action/response_headers: X-Route: if the app")
    assert result.stderr.count("not translated:") == 1, result.stderr
    server = serve(result.stdout, port)

    assert requests.get(server.url("/back/teapot?v=2")).status_code == 418
    back = requests.get(server.url("/back/items?v=2"))
    assert back.json() == {"target": "back", "script_name": "/back", "path_info": "/items",
                           "query": "v=2", "method": "GET", "body": ""}
    assert back.headers["X-Route"] == "back"
    # Unit's prefix: SCRIPT_NAME only for paths under it, at a segment boundary.
    assert requests.get(server.url("/front/a/b")).json() == {
        "target": "front", "script_name": "/front", "path_info": "/a/b"}
    assert requests.get(server.url("/frontier")).json() == {
        "target": "front", "script_name": "", "path_info": "/frontier"}
    assert requests.get(server.url("/")).json()["path_info"] == "/"
    # Failing the `arguments` condition, the request goes on to the next step, as in Unit.
    assert requests.get(server.url("/back/items?v=1")).json() == {
        "target": "front", "script_name": "", "path_info": "/back/items"}


def test_failed_conditions_fall_through_to_later_steps_and_routes(tmp_path, serve):
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www/robots.txt").write_text("User-agent: *\n")
    site = {"type": "python", "path": str(UNIT / "targets"), "protocol": "wsgi", **home(),
            "targets": {"front": {"module": "front", "callable": "app"},
                        "back": {"module": "back", "prefix": "/api"}}}
    config = {
        "listeners": {"*:8000": {"pass": "routes/main"}},
        "routes": {
            "main": [
                # The route's steps test the rewritten URI; as in Unit, only the headers of the
                # step that answers are added.
                {"match": {"uri": "/v1/*"},
                 "action": {"rewrite": "/api/items", "pass": "routes/writes",
                            "response_headers": {"X-Outer": "o"}}},
                {"match": {"uri": "/api/*", "method": ["POST", "PUT"],
                           "headers": {"Content-Type": "application/json"}},
                 "action": {"pass": "routes/writes"}},
                # One of the objects must match: a session, or both a token and a user.
                {"match": {"uri": "/api/*", "cookies": [{"session": "~^[0-9a-f]+$"},
                                                        {"token": "ok", "user": "*"}]},
                 "action": {"pass": "applications/site/back"}},
                {"match": {"uri": "/api/*"}, "action": {"return": 401}},
                # Files first, the app for everything else: a named location in nginx, whose
                # route is tried in the rewrite phase too.
                {"action": {"share": f"{tmp_path}/www$uri", "fallback": {"pass": "routes/pages"}}},
            ],
            "writes": [
                {"match": {"arguments": {"dry": "1"}}, "action": {"return": 204}},
                {"action": {"pass": "applications/site/back",
                            "response_headers": {"X-Write": "yes"}}},
            ],
            "pages": [
                {"match": {"uri": "/admin/*", "source": "10.0.0.0/8"},
                 "action": {"pass": "applications/site/front"}},
                {"match": {"uri": "/admin/*"}, "action": {"return": 403}},
                # `*` admits any value of the header, but not its absence.
                {"match": {"uri": "/form", "headers": {"X-Debug": "*"}}, "action": {"return": 204}},
                {"match": {"uri": "~^/(?:page|form)"}, "action": {"pass": "applications/site/front"}},
            ],
        },
        "applications": {"site": site},
    }
    result = from_unit(tmp_path, config, "--listen", f"*:8000=127.0.0.1:{port}")
    assert result.returncode == 2
    named = sorted(line.split(": ")[2] for line in result.stderr.splitlines()
                   if "not translated:" in line)
    # A regex runs on one cookie's value in Unit: nginx's $cookie_session is the nearest.
    assert named == ["routes/main/2/match/cookies/0/session",
                     "routes/writes/1/action/response_headers"], result.stderr
    server = serve(result.stdout, port)

    json_type = {"Content-Type": "application/json"}
    # Every condition met: the body reaches the app through two dispatches.
    write = requests.post(server.url("/api/items?x=1"), data='{"a": 1}', headers=json_type)
    assert write.json() == {"target": "back", "script_name": "/api", "path_info": "/items",
                            "query": "x=1", "method": "POST", "body": '{"a": 1}'}
    assert write.headers["X-Write"] == "yes"
    assert requests.put(server.url("/api/items?dry=1"), data="{}",
                        headers=json_type).status_code == 204
    old = requests.post(server.url("/v1/legacy?dry=0"), data="z")
    assert old.json() == {"target": "back", "script_name": "/api", "path_info": "/items",
                          "query": "dry=0", "method": "POST", "body": "z"}
    assert old.headers["X-Write"] == "yes" and "X-Outer" not in old.headers
    assert requests.get(server.url("/v1/legacy?dry=1")).status_code == 204
    # A POST of another type fails the first step; with the cookie the second takes it, without
    # it the third.
    form = requests.post(server.url("/api/items"), data="a=1", cookies={"session": "c0ffee"})
    assert (form.json()["method"], form.json()["body"]) == ("POST", "a=1")
    assert "X-Write" not in form.headers
    assert requests.post(server.url("/api/items"), data="a=1").status_code == 401
    assert requests.get(server.url("/api/items"), cookies={"session": "xyz"}).status_code == 401
    assert requests.get(server.url("/api/items"),
                        cookies={"token": "ok", "user": "ann"}).json()["target"] == "back"
    assert requests.get(server.url("/api/items"), cookies={"token": "ok"}).status_code == 401
    # The share, then its fallback's route, in order, with a 404 when no step is left.
    assert requests.get(server.url("/robots.txt")).text == "User-agent: *\n"
    assert requests.get(server.url("/admin/users")).status_code == 403
    assert requests.post(server.url("/form"), data=b"x").json() == {
        "target": "front", "script_name": "", "path_info": "/form"}
    assert requests.post(server.url("/form"), headers={"X-Debug": "0"}).status_code == 204
    assert requests.get(server.url("/elsewhere")).status_code == 404


def test_share_with_a_fallback_and_hosts(tmp_path, serve):
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www/robots.txt").write_text("User-agent: *\n")
    config = {
        "listeners": {"*:80": {"pass": "routes"}},
        "routes": [
            {"match": {"host": ["admin.test", "*.admin.test"]}, "action": {"return": 403}},
            # Unit's usual catch-all: files first, the app for everything else.
            {"action": {"share": f"{tmp_path}/www$uri",
                        "fallback": {"pass": "applications/site/front"}}},
        ],
        "applications": {
            "site": {"type": "python", "path": str(UNIT / "targets"), "protocol": "wsgi", **home(),
                     "targets": {"front": {"module": "front", "callable": "app"}}},
        },
    }
    result = from_unit(tmp_path, config, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    server = serve(result.stdout, port)

    robots = requests.get(server.url("/robots.txt"))
    assert (robots.text, robots.headers["Content-Type"]) == ("User-agent: *\n", "text/plain")
    assert requests.get(server.url("/app/page")).json() == {
        "target": "front", "script_name": "", "path_info": "/app/page"}
    assert requests.post(server.url("/form"), data=b"x").json()["path_info"] == "/form"
    for host in ("admin.test", "x.admin.test", "ADMIN.test:80"):
        assert requests.get(server.url("/robots.txt"), headers={"Host": host}).status_code == 403
    assert requests.get(server.url("/robots.txt"), headers={"Host": "www.test"}).status_code == 200


def raw_get(port, target, headers=()):
    """A GET as written (the target unquoted, the Host given); the status and the response's
    header fields as a list, repeated ones apart."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, response.getheaders()


def test_conditions_compare_as_unit_does(tmp_path, serve):
    port = free_port()
    config = {
        "listeners": {"*:80": {"pass": "routes"}},
        "routes": [
            # Names, values and patterns decoded (`+` a space), names with case, and every
            # occurrence of a repeated argument or cookie must match.
            {"match": {"query": "%7Efuzzy word"}, "action": {"return": 200}},
            {"match": {"arguments": {"word": "*%C3*"}}, "action": {"return": 201}},
            {"match": {"arguments": {"mode": "strict", "access": "!full"}}, "action": {"return": 202}},
            {"match": {"cookies": {"sid": "AB*"}}, "action": {"return": 203}},
            # A header's wildcard without case, its regex with it; a method's pattern upper-cased.
            {"match": {"headers": {"User-Agent": "~^curl"}}, "action": {"return": 204}},
            {"match": {"headers": {"X-Mode": "yes"}, "method": "get"}, "action": {"return": 205}},
            # Argument names are decoded too; cookie names end at the first `=` and no value
            # holds a `;`, so these two never match.
            {"match": {"arguments": {"a+b": "1"}}, "action": {"return": 206}},
            {"match": {"arguments": {"a%3Db": "1"}}, "action": {"return": 207}},
            {"match": {"cookies": {"a=b": "1"}}, "action": {"return": 208}},
            {"match": {"cookies": {"c": "x;y"}}, "action": {"return": 209}},
            {"action": {"return": 299}},
        ],
    }
    result = from_unit(tmp_path, config, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    server = serve(result.stdout, port)
    host = [("Host", "t")]

    def status(target, headers=()):
        return raw_get(port, target, host + list(headers))[0]

    assert status("/?~fuzzy+word") == 200
    assert status("/?%7efuzzy%20word") == 200
    assert status("/?~fuzzy+Word") == 299
    assert status("/?word=x%c3y") == 201
    assert status("/?wor%64=%C3") == 201
    assert status("/?word=x%C3y&word=z") == 299
    assert status("/?Word=%C3") == 299
    assert status("/?mode=str%69ct&access") == 202
    assert status("/?mode=strict&access=ful%6c") == 299
    # A missing argument matches no pattern, not even a negation.
    assert status("/?mode=strict") == 299
    assert status("/", [("Cookie", "a=1; sid=ABC")]) == 203
    assert status("/", [("Cookie", "sid=ABC; sid=x")]) == 299
    assert status("/", [("Cookie", "SID=ABC")]) == 299
    assert status("/", [("User-Agent", "curl/8")]) == 204
    assert status("/", [("User-Agent", "Curl/8")]) == 299
    assert status("/", [("X-Mode", "YES")]) == 205
    assert status("/?a+b=1") == 206
    assert status("/?a%20b=1") == 206
    assert status("/?a%2Bb=1") == 299
    assert status("/?a%3db=1") == 207
    assert status("/?a=b=1") == 299
    assert status("/", [("Cookie", "a=b=1")]) == 299
    assert status("/", [("Cookie", "c=x;y")]) == 299
    assert status("/", [("Cookie", "c=x;y"), ("Cookie", "a=b=1")]) == 299


def test_responses_as_unit_writes_them(tmp_path, serve):
    port = free_port()
    (tmp_path / "www/dir").mkdir(parents=True)
    (tmp_path / "www/a.css").write_text("a {}\n")
    config = {
        "listeners": {"*:80": {"pass": "routes"}},
        "routes": [
            {"match": {"host": ""}, "action": {"return": 210}},
            {"match": {"host": "www.*.test"}, "action": {"return": 211}},
            {"match": {"uri": "/old/*"}, "action": {"return": 301, "location": "/new/"}},
            {"match": {"uri": "/uri"}, "action": {"return": 308, "location": "$uri/"}},
            {"match": {"uri": "/srv"},
             "action": {"return": 204, "response_headers": {"Server": "mine", "X-A": "1"}}},
            # Unit sets them on every 2xx and 3xx (202 too), on no other; a proxy's own stand.
            {"match": {"uri": "/acc"}, "action": {"return": 202, "response_headers": {"X-A": "1"}}},
            {"match": {"uri": "/px"},
             "action": {"rewrite": "/acc", "proxy": f"http://127.0.0.1:{port}",
                        "response_headers": {"X-A": None, "X-P": "p"}}},
            {"match": {"uri": "/px404"},
             "action": {"rewrite": "/missing", "proxy": f"http://127.0.0.1:{port}",
                        "response_headers": {"X-P": "p"}}},
            {"action": {"share": f"{tmp_path}/www$uri",
                        "response_headers": {"Content-Type": "text/x-forced",
                                             "Cache-Control": "max-age=60"}}},
        ],
    }
    result = from_unit(tmp_path, config, "--listen", f"127.0.0.1:{port}")
    # Server cannot be set, in Unit as in nginx: named.
    assert result.returncode == 2, result.stderr
    assert "routes/4/action/response_headers/Server: Unit cannot set" in result.stderr
    server = serve(result.stdout, port)
    host = [("Host", "t")]

    # HTTP/1.0 has no Host to send (nginx refuses HTTP/1.1 without one).
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 210 ")
    assert raw_get(port, "/", [("Host", "WWW.shop.test")])[0] == 211
    assert raw_get(port, "/", [("Host", "www.test")])[0] == 404
    # Unit sends a `location` as written: nginx would make it absolute, with its own port.
    status, fields = raw_get(port, "/old/x", host)
    assert (status, dict(fields)["Location"]) == (301, "/new/")
    assert dict(raw_get(port, "/uri", host)[1])["Location"] == "/uri/"
    status, fields = raw_get(port, "/srv", host)
    names = [name.lower() for name, _ in fields]
    assert status == 204 and names.count("server") == 1 and ("X-A", "1") in fields
    # A field nginx sets itself is replaced, as Unit updates it: one Content-Type.
    status, fields = raw_get(port, "/a.css", host)
    assert status == 200
    assert [v for n, v in fields if n.lower() == "content-type"] == ["text/x-forced"]
    assert [v for n, v in fields if n.lower() == "cache-control"] == ["max-age=60"]
    status, fields = raw_get(port, "/missing", host)
    assert status == 404 and "cache-control" not in [n.lower() for n, _ in fields]
    status, fields = raw_get(port, "/acc", host)
    assert status == 202 and ("X-A", "1") in fields
    status, fields = raw_get(port, "/px", host)
    names = [name.lower() for name, _ in fields]
    assert status == 202 and "x-a" not in names and ("X-P", "p") in fields
    status, fields = raw_get(port, "/px404", host)
    assert status == 404 and "x-p" not in [n.lower() for n, _ in fields]


def test_environment_threads_and_limits(tmp_path, serve):
    port = free_port()
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {
        "listeners": {"*:80": {"pass": "applications/env"}},
        "applications": {
            "env": {"type": "python", "path": str(UNIT / "env_app"), "module": "app",
                    "working_directory": str(workdir), "threads": 4, "processes": 2,
                    "environment": {"GREETING": "hello \"unit\"; {braces}", "APP_MODE": "prod"},
                    "limits": {"timeout": 1, "requests": 1000}, **home()},
        },
        "settings": {"http": {"max_body_size": 64, "server_version": False}},
    }
    result = from_unit(tmp_path, config, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    conf = result.stdout
    for line in ("worker_processes 2;", f"working_directory {workdir};",
                 'env "GREETING=hello \\"unit\\"; {braces}";', "env APP_MODE=prod;",
                 "wsgi_max_threads 4;", "wsgi_max_requests 1000;", "wsgi_read_timeout 1s;",
                 "client_max_body_size 64;", "server_tokens off;"):
        assert line in conf, line
    server = serve(conf, port)

    answers = [requests.get(server.url("/")).json() for _ in range(8)]
    assert {a["greeting"] for a in answers} == {'hello "unit"; {braces}'}
    assert {a["mode"] for a in answers} == {"prod"}
    assert {a["cwd"] for a in answers} == {str(workdir)}
    wait_for(lambda: len(server.worker_pids()) == 2, what="2 workers (processes)")
    # limits.timeout: the request is ended (Unit answers 503, the module 504) and the worker
    # keeps serving.
    assert requests.get(server.url("/sleep"), timeout=30).status_code == 504
    assert requests.get(server.url("/")).status_code == 200
    # settings.http.max_body_size.
    assert requests.post(server.url("/"), data=b"x" * 65).status_code == 413
    assert "nginx/" not in requests.get(server.url("/missing-is-app")).headers.get("Server", "")


def test_netbox_documented_config(tmp_path, serve):
    """netbox-docker's nginx-unit.json, with its paths moved under the test's copy of NetBox's
    layout and the test's addresses (and 127.0.0.1 trusted as a proxy)."""
    nb = UNIT / "netbox"
    ports = [free_port() for _ in range(2)]
    sources = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"]
    forwarded = {"client_ip": "X-Forwarded-For", "protocol": "X-Forwarded-Proto", "source": sources}
    config = {
        "listeners": {
            "0.0.0.0:8080": {"pass": "routes/main", "forwarded": forwarded},
            "0.0.0.0:8081": {"pass": "routes/status", "forwarded": forwarded},
        },
        "routes": {
            "main": [
                {"match": {"uri": "/static/*"}, "action": {"share": f"{nb}/netbox${{uri}}"}},
                {"action": {"pass": "applications/netbox"}},
            ],
            "status": [
                {"match": {"uri": "/status/*"},
                 "action": {"proxy": f"http://unix:{tmp_path}/unit.sock"}},
            ],
        },
        "applications": {
            "netbox": {"type": "python 3", "path": f"{nb}/netbox/", "module": "netbox.wsgi",
                       "home": python_home() or "/usr",
                       "processes": {"max": 4, "spare": 1, "idle_timeout": 120}},
        },
        "access_log": str(tmp_path / "access.log"),
        "settings": {"http": {"max_body_size": 104857600}},
    }
    result = from_unit(tmp_path, config, "--listen", f"0.0.0.0:8080=127.0.0.1:{ports[0]}",
                       "--listen", f"0.0.0.0:8081=127.0.0.1:{ports[1]}")
    assert result.returncode == 2
    not_translated = sorted(line.split(": ")[2] for line in result.stderr.splitlines()
                            if "not translated:" in line)
    assert not_translated == ["applications/netbox/processes/idle_timeout",
                              "applications/netbox/processes/spare"]
    assert result.stderr.splitlines()[-1] == (
        "ngx-wsgi from-unit: 2 option(s) not translated; review the output")
    server = serve(result.stdout, ports[0])
    wait_for(lambda: len(server.worker_pids()) == 4, what="4 workers (processes.max)")

    assert requests.get(server.url("/static/netbox.css")).text == "netbox.css\n"
    app = requests.post(server.url("/dcim/devices/"), data=b"x" * 3000,
                        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    # The client's address and scheme from the trusted proxy's headers, as under Unit.
    assert app.json() == {"remote_addr": "203.0.113.7", "scheme": "https", "forwarded_proto": "https",
                          "path": "/dcim/devices/", "length": 3000}
    plain = requests.get(server.url("/")).json()
    assert (plain["remote_addr"], plain["scheme"], plain["forwarded_proto"]) == ("127.0.0.1", "http", "http")
    # The status route proxies to a socket that is not there; other URIs are Unit's 404.
    status = f"http://127.0.0.1:{ports[1]}"
    assert requests.get(f"{status}/status/x").status_code == 502
    assert requests.get(f"{status}/other").status_code == 404
    assert "/dcim/devices/" in (tmp_path / "access.log").read_text()


def test_scheme_conditions_behind_a_trusted_proxy_see_the_forwarded_scheme(tmp_path, serve):
    """Unit's http-to-https redirect behind a TLS balancer: `match` `scheme` is the scheme the
    trusted source's header gives, in the listener's route and in a route it passes to."""
    ports = [free_port() for _ in range(2)]

    def forwarded(source):
        return {"client_ip": "X-Forwarded-For", "protocol": "X-Forwarded-Proto", "source": source}

    config = {
        "listeners": {
            "*:8000": {"pass": "routes/main", "forwarded": forwarded("127.0.0.0/8")},
            "*:8001": {"pass": "routes/main", "forwarded": forwarded("10.0.0.0/8")},
        },
        "routes": {
            "main": [
                {"match": {"scheme": "http"},
                 "action": {"return": 301, "location": "https://example.test$request_uri"}},
                {"match": {"uri": "/api/*"}, "action": {"pass": "routes/api"}},
                {"action": {"pass": "applications/site/front"}},
            ],
            "api": [
                {"match": {"scheme": "https"}, "action": {"pass": "applications/site/back"}},
                {"action": {"return": 403}},
            ],
        },
        "applications": {
            "site": {"type": "python", "path": str(UNIT / "targets"), "protocol": "wsgi", **home(),
                     "targets": {"front": {"module": "front", "callable": "app"},
                                 "back": {"module": "back"}}},
        },
    }
    result = from_unit(tmp_path, config, "--listen", f"*:8000=127.0.0.1:{ports[0]}",
                       "--listen", f"*:8001=127.0.0.1:{ports[1]}")
    assert result.returncode == 0, result.stderr
    server = serve(result.stdout, ports[0])
    https = {"X-Forwarded-Proto": "https"}

    def get(port, path, headers=None):
        return requests.get(f"http://127.0.0.1:{port}{path}", headers=headers,
                            allow_redirects=False)

    # Trusted: the balancer's https reaches the apps; its http, or no header, is redirected.
    assert get(ports[0], "/a", https).json()["target"] == "front"
    assert get(ports[0], "/api/x", https).json()["target"] == "back"
    redirect = get(ports[0], "/a?b=1", {"X-Forwarded-Proto": "http"})
    assert (redirect.status_code, redirect.headers["Location"]) == (301, "https://example.test/a?b=1")
    assert get(ports[0], "/a").status_code == 301
    # Untrusted (the client is not in 10.0.0.0/8): its header changes nothing.
    assert get(ports[1], "/a", https).status_code == 301
    assert get(ports[1], "/api/x", https).status_code == 301


def test_forms_of_older_unit_configurations(tmp_path, serve):
    """What older howtos and Unit versions wrote: a listener's `application`, `python3.11`, a
    `user` without its group, a share ending in a slash, a rewrite putting `/` before `$uri`."""
    ports = [free_port() for _ in range(2)]
    (tmp_path / "code").mkdir()
    (tmp_path / "code/index.html").write_text("code index\n")
    (tmp_path / "code/app.css").write_text("never served\n")
    (tmp_path / "empty").mkdir()
    user = pwd.getpwuid(os.geteuid())
    group = grp.getgrgid(user.pw_gid).gr_name
    front = {"path": str(UNIT / "targets"), "module": "front", "callable": "app", "protocol": "wsgi",
             "user": user.pw_name, **home()}
    config = {
        "listeners": {"*:80": {"pass": "routes"}, "*:81": {"application": "legacy"}},
        "routes": [
            {"match": {"uri": "/static/*"}, "action": {"share": f"{tmp_path}/code/"}},
            {"match": {"uri": "/docs/*"}, "action": {"share": f"{tmp_path}/empty/"}},
            {"match": {"uri": "/v1/*"}, "action": {"rewrite": "/app/$uri", "pass": "applications/site"}},
        ],
        "applications": {"site": {"type": "python3.11", **front},
                         "legacy": {"type": "python 3", **front}},
    }
    result = from_unit(tmp_path, config, "--listen", f"*:80=127.0.0.1:{ports[0]}",
                       "--listen", f"*:81=127.0.0.1:{ports[1]}")
    assert result.returncode == 2, result.stderr
    named = sorted(line.split(": ")[2] for line in result.stderr.splitlines()
                   if "not translated:" in line)
    # The module beside the tool embeds the Python the tests run (3.11 when the type names it).
    embedded = sys.version_info[:2] == (3, 11)
    assert named == sorted(["listeners/*:81/application", "routes/0/action/share",
                            "routes/1/action/share", *([] if embedded else ["applications/site/type"])]), \
        result.stderr
    assert f"user {user.pw_name} {group};" in result.stdout
    server = serve(result.stdout, ports[0])

    # Unit 1.26+: the share ending in a slash is its index file for every URI, 404 without one
    # (never nginx's redirect to the directory).
    for path in ("/static/", "/static/app.css", "/static/a/b"):
        page = requests.get(server.url(path), allow_redirects=False)
        assert (page.status_code, page.text) == (200, "code index\n"), path
    assert requests.get(server.url("/docs/x"), allow_redirects=False).status_code == 404
    # Unit merges the slashes the template puts together.
    assert requests.get(server.url("/v1/a/b")).json() == {
        "target": "front", "script_name": "", "path_info": "/app/v1/a/b"}
    legacy = requests.get(f"http://127.0.0.1:{ports[1]}/x/y").json()
    assert legacy == {"target": "front", "script_name": "", "path_info": "/x/y"}


def test_what_is_not_translated_is_named(tmp_path, built):
    port = free_port()
    # A module whose source does not show the protocol: it takes its callable from another.
    (tmp_path / "reexport.py").write_text("from back import application  # noqa: F401\n")
    config = {
        "listeners": {
            "*:80": {"pass": "routes"},
            "unix:@abstract": {"pass": "routes"},
        },
        "routes": [
            {"match": {"uri": "/files/*"},
             "action": {"share": "/srv/files$uri", "types": ["image/*"], "chroot": "/srv"}},
            {"match": {"uri": "/dyn/*"}, "action": {"pass": "applications/$host"}},
            {"action": {"pass": "applications/app", "response_headers": {"X-Powered-By": None}}},
        ],
        "applications": {
            "app": {"type": "python", "path": [str(tmp_path), str(UNIT / "targets")], "module": "reexport",
                    "isolation": {"namespaces": {"credential": True}}, "stdout": "/var/log/app.out",
                    "processes": {"max": 2, "spare": 1}, **home()},
            "php": {"type": "php", "root": "/www"},
        },
        "settings": {"http": {"log_route": True}},
    }
    result = from_unit(tmp_path, config, "--listen", f"*:80=127.0.0.1:{port}")
    assert result.returncode == 2
    named = [line.split(": ", 2)[2] for line in result.stderr.splitlines() if "not translated:" in line]
    expected = {
        "listeners/unix:@abstract": "an abstract UNIX socket",
        "routes/0/action/types": "nginx serves files of every type",
        "routes/0/action/chroot": "nginx has no equivalent",
        "routes/1/action/pass": "a destination chosen by variables",
        "routes/2/action/response_headers/X-Powered-By": "nginx cannot take a header out",
        "applications/app/isolation": "nginx's workers run in nginx's own namespaces",
        "applications/app/stdout": "an nginx worker's standard error goes to nginx's error log",
        "applications/app/processes/spare": "nginx runs a fixed number of worker processes",
        "applications/app/protocol": "no \"protocol\": Unit tells WSGI from ASGI",
        "applications/php": "no listener or route passes requests to it",
        "settings/http/log_route": "nginx's `error_log ... debug`",
    }
    for path, reason in expected.items():
        assert any(n.startswith(f"{path}: {reason}") for n in named), (path, named)
    assert len(named) == len(expected), named
    for n in named:
        assert f"# not translated: {n}" in result.stdout
    # What was translated still makes a configuration nginx takes.
    server = Translated(built, result.stdout, port)
    check = server.run("-t")
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("content, message", [
    ("{", "unit.json: not JSON: EOF while parsing an object at line 1 column 1"),
    ('{"applications": {"a": {"type": "python", "module": "m", "threads": "4"}}}',
     'unit.json: applications/a/threads: expected a whole number from 1, got "4"'),
    ('{"listeners": {"*:80": {"pass": "routes/main"}}, "routes": {"other": []}}',
     'unit.json: listeners/*:80/pass: "routes/main" names no route'),
    ('{"listeners": {"*:80": {"pass": "routes"}}, "routes": [{"match": {"uri": "/a%zz"}, "action": {"return": 200}}]}',
     'unit.json: routes/0/match/uri: "/a%zz": a malformed %-escape, which Unit refuses'),
    ('{"listeners": {"*:80": {"pass": "routes"}}, "routes": [{"match": {"arguments": {"a": "%+1"}}, "action": {"return": 200}}]}',
     'unit.json: routes/0/match/arguments/a: "%+1": a malformed %-escape, which Unit refuses'),
    ('{"listeners": {"*:80": {"pass": "routes"}}, "routes": [{"match": {"arguments": {"a%zz": "1"}}, "action": {"return": 200}}]}',
     'unit.json: routes/0/match/arguments/a%zz: "a%zz": a malformed %-escape in an argument\'s name, which Unit refuses'),
    ('{"listeners": {"*:80": {"pass": "routes"}}, "routes": [{"match": {"cookies": {"": "1"}}, "action": {"return": 200}}]}',
     'unit.json: routes/0/match/cookies: an empty name, which Unit refuses'),
    ('{"listeners": {"*:99999": {"pass": "applications/a"}}, "applications": {"a": {"type": "python", "module": "m"}}}',
     'unit.json: listeners/*:99999: "*:99999" is not an address Unit listens on (*:PORT, IP:PORT, '
     '[IPv6]:PORT or unix:PATH, with a port from 1 to 65535)'),
])
def test_unreadable_input_exits_1_naming_the_json_path(tmp_path, content, message):
    result = from_unit(tmp_path, content)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == f"ngx-wsgi from-unit: {tmp_path}/{message}"


def test_usage_errors_exit_1(tmp_path):
    result = subprocess.run([TOOL, "from-unit"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "which file?" in result.stderr and "usage: ngx-wsgi from-unit UNIT.json" in result.stderr
    missing = subprocess.run([TOOL, "from-unit", str(tmp_path / "none.json")], capture_output=True,
                             text=True)
    assert missing.returncode == 1
    assert "none.json: No such file or directory" in missing.stderr


@pytest.mark.parametrize("directive, message", [
    ("wsgi_mount api;", 'wsgi_mount "api": the mount point must start with "/"'),
    ("wsgi_mount /a; wsgi_mount /b;", '"wsgi_mount" directive is duplicate'),
])
def test_wsgi_mount_errors_fail_the_check(nginx_factory, directive, message):
    server = nginx_factory(f"  location ~ ^/a {{\n   wsgi_app {APPS}/environ_app.py;\n   {directive}\n  }}\n")
    check = server.run("-t")
    assert check.returncode != 0
    assert message in check.stderr


def test_wsgi_mount_without_an_app_fails_the_check(nginx_factory):
    server = nginx_factory("  location /x/ {\n   wsgi_mount /x;\n  }\n")
    check = server.run("-t")
    assert check.returncode != 0
    assert 'wsgi_mount "/x" is in a location that serves no app' in check.stderr
