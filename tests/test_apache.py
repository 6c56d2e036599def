"""The Apache adapter's own directives and process life: configuration checked at `apache2 -t`
(and start), one interpreter per child started in the child and finalised when it exits, a crashed
child replaced by the parent. The WSGI semantics are the shared suite's (`[apache]` cases)."""
import base64
import hashlib
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import tempfile
import time

import pytest
import requests

from conftest import (APACHE_BINARY, APACHE_MODULE, APACHE_MODULES, APPS, UNLOADABLE_APPS, Apache, post_3000_bytes,
                      raw_request, route, statuses_of_concurrent, wait_for)

BROKEN = APPS / "broken"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(APACHE_BINARY) and APACHE_MODULE.exists()) or "apache" not in os.environ.get(
        "NGX_WSGI_SERVERS", "apache"),
    reason="apache2 or the Apache module is not installed/built, or NGX_WSGI_SERVERS excludes it")


@pytest.fixture
def apaches():
    started = []

    def make(routes, **kwargs):
        server = Apache(routes, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def shared_dir():
    """A directory the children (nobody, when the tests run as root) can write to."""
    d = tempfile.mkdtemp(prefix="ngx-wsgi-apache-marks-")
    os.chmod(d, 0o777)
    return d


@pytest.mark.parametrize("spec, expected", UNLOADABLE_APPS)
def test_unloadable_app_fails_config_test(apaches, spec, expected):
    server = apaches([route("/", spec)])
    result = server.run("-t")
    assert result.returncode != 0
    assert "Configuration check failed" in result.stderr
    assert re.search(rf'\[ngx_wsgi:emerg\] .*NgxWsgiApp "{re.escape(spec)}" \(in {server.conf}:\d+\) cannot be loaded',
                     result.stderr), result.stderr
    assert expected in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the children are nobody only under a root parent")
def test_an_app_in_a_directory_the_children_may_not_enter_fails_the_check_saying_so(apaches):
    server = apaches([])
    private = server.prefix / "private"
    private.mkdir(mode=0o700)
    (private / "app.py").write_text((APPS / "sleepy.py").read_text())
    server = apaches([route("/", private / "app.py")])
    result = server.run("-t")
    assert result.returncode != 0
    assert f"{private}/app.py: permission denied to this process's user (uid " in result.stderr, result.stderr


def test_traceback_reaches_the_config_test_output_line_by_line(apaches):
    result = apaches([route("/", f"{BROKEN}/raises_at_import.py")]).run("-t")
    assert "cannot be loaded: Traceback (most recent call last):" in result.stderr
    assert re.search(r'\[ngx_wsgi:emerg\] .*  File ".*raises_at_import.py", line 1, in <module>\n', result.stderr)


def test_broken_app_prevents_start(apaches):
    server = apaches([route("/", f"{BROKEN}/import_error.py")])
    with pytest.raises(RuntimeError, match="No module named"):
        server.start()
    assert server.proc.returncode != 0


def test_good_config_passes(apaches):
    result = apaches([route("/", APPS / "sleepy.py")]).run("-t")
    assert result.returncode == 0, result.stderr
    assert "Syntax OK" in result.stderr


@pytest.mark.parametrize("value, expected", [
    ("not a module", "is neither PATH.py[:CALLABLE] nor module.name[:CALLABLE]"),
    ("app.py:1bad", "is not a Python name"),
])
def test_malformed_app_value(apaches, value, expected):
    result = apaches([route("/", f'"{value}"')]).run("-t")
    assert result.returncode != 0
    assert "NgxWsgiApp: " in result.stderr and expected in result.stderr, result.stderr


def test_python_home_of_another_version_is_refused(apaches, tmp_path):
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.99.1\n")
    server = apaches([route("/", APPS / "sleepy.py")], home=False, server_extra=f"NgxWsgiPythonHome {tmp_path}")
    result = server.run("-t")
    assert result.returncode != 0
    assert re.search(rf"Syntax error on line \d+ of {server.conf}:\nNgxWsgiPythonHome: {tmp_path} is Python 3\.99; "
                     r"this module embeds Python 3\.\d+", result.stderr), result.stderr


def test_interpreter_settings_only_in_the_main_server(apaches, tmp_path):
    server = apaches([route("/", APPS / "sleepy.py")], server_extra=(
        f"<VirtualHost *>\n ServerName other.local\n NgxWsgiPythonPath {tmp_path}\n</VirtualHost>"))
    result = server.run("-t")
    assert result.returncode != 0
    assert "NgxWsgiPythonPath cannot occur within <VirtualHost> section" in result.stderr, result.stderr


def test_python_path_that_does_not_exist(apaches, tmp_path):
    result = apaches([route("/", APPS / "sleepy.py")], server_extra=f"NgxWsgiPythonPath {tmp_path}/gone").run("-t")
    assert result.returncode != 0
    assert f'NgxWsgiPythonPath: "{tmp_path}/gone" is not a directory' in result.stderr


def test_module_name_from_python_path_in_a_location_and_a_virtual_host(apaches):
    server = apaches(
        [route("/a", "environ_app"), route("~ ^/re/", "environ_app")],
        server_extra=f"NgxWsgiPythonPath {APPS}\nLoadModule env_module /usr/lib/apache2/modules/mod_env.so\n",
    )
    port = server.port
    server.conf.write_text(server.conf.read_text() + (
        f"<VirtualHost 127.0.0.1:{port}>\n ServerName test.local\n NgxWsgiApp environ_app\n</VirtualHost>\n"
        f"<VirtualHost 127.0.0.1:{port}>\n ServerName vhost.local\n"
        f" <Location /v/>\n  NgxWsgiApp {APPS}/environ_app.py:application\n  SetEnv APP_ENV production\n"
        f"  SetEnv SCRIPT_NAME /public\n </Location>\n</VirtualHost>\n"))
    server.start()
    e = requests.get(server.url("/a/b?x"), headers={"Proxy": "http://attacker:3128", "X-Kept": "1"}).json()
    assert (e["SCRIPT_NAME"], e["PATH_INFO"], e["QUERY_STRING"], e["SERVER_NAME"]) == ("/a", "/b", "x", "test.local")
    # httpoxy: Apache keeps a client's Proxy header out of every CGI-like environment, where
    # HTTP_PROXY would name the app's outgoing proxy (mod_wsgi's environ too).
    assert "HTTP_PROXY" not in e and e["HTTP_X_KEPT"] == "1"
    e = requests.get(server.url("/re/x")).json()
    assert (e["SCRIPT_NAME"], e["PATH_INFO"]) == ("", "/re/x")
    e = requests.get(server.url("/v/w"), headers={"Host": "vhost.local"}).json()
    assert (e["PATH_INFO"], e["SERVER_NAME"]) == ("/w", "vhost.local")
    assert e["APP_ENV"] == "production", "SetEnv reaches the environ, like wsgi_param"
    assert e["SCRIPT_NAME"] == "/public", "and may override a CGI key"
    e = requests.get(server.url("/v/w"), headers={"Host": "test.local"}).json()
    assert (e["SCRIPT_NAME"], e["PATH_INFO"]) == ("", "/v/w"), "the other host serves its own app at its root"


def test_the_user_an_auth_module_checked_is_remote_user(apaches):
    # As Apache's CGI variables and mod_wsgi give it (over what SetEnvIf sets): Trac's login,
    # Django's RemoteUserMiddleware and hgweb's push rely on it. A client's own Authorization header,
    # where nothing checks it, names no user.
    digest = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    mods = "".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so\n"
                   for m in ("authn_core", "authn_file", "auth_basic", "authz_user", "setenvif"))
    server = apaches([route("/", APPS / "environ_app.py")], server_extra=mods)
    # In the server's own directory, which its children (nobody, when the tests run as root) read.
    users = server.prefix / "users"
    users.write_text(f"admin:{{SHA}}{digest}\n")
    users.chmod(0o644)
    server.conf.write_text(server.conf.read_text() + (
        f'<Location /private/>\n AuthType Basic\n AuthName "p"\n AuthUserFile {users}\n'
        f' Require valid-user\n SetEnvIf X-User "(.+)" REMOTE_USER=$1\n</Location>\n'))
    server.start()
    assert requests.get(server.url("/private/x")).status_code == 401
    e = requests.get(server.url("/private/x"), auth=("admin", "s3cret"), headers={"X-User": "mallory"}).json()
    assert (e["REMOTE_USER"], e["AUTH_TYPE"]) == ("admin", "Basic"), "a variable cannot replace the checked user"
    e = requests.get(server.url("/open"), auth=("admin", "s3cret")).json()
    assert "REMOTE_USER" not in e and "AUTH_TYPE" not in e, e


def marks(directory, kind):
    return sorted(int(name.split("-")[1]) for name in os.listdir(directory) if name.startswith(kind + "-"))


def test_app_imported_in_the_child_at_start_and_finalized_at_exit(apaches):
    d = shared_dir()
    app = APPS / "lifecycle_app.py"
    server = apaches([route("/", app), route("/again/", f"{app}:application")],
                     env={"NGX_WSGI_TEST_MARKS": d}).start()
    child = server.worker_pids()[0]
    deadline = time.monotonic() + 10
    while child not in marks(d, "imported") and time.monotonic() < deadline:
        time.sleep(0.05)
    # Imported by the child before any request, once for both locations; never by the parent
    # (the configuration check imports it in a short-lived process of its own).
    assert child in marks(d, "imported") and server.proc.pid not in marks(d, "imported")
    assert requests.get(server.url("/")).text == str(child)
    assert requests.get(server.url("/again/")).text == str(child)
    with open(os.path.join(d, f"imported-{child}")) as f:
        assert f.read().count("\n") == 1

    server.send_signal(signal.SIGWINCH)  # graceful stop
    server.proc.wait(timeout=30)
    assert server.proc.returncode == 0
    assert child in marks(d, "finalized"), "atexit handlers ran: the child finalised Python"
    # So did the configuration check's processes, which imported it too.
    assert marks(d, "finalized") == marks(d, "imported")
    assert "Segmentation fault" not in server.error_log()


def test_a_prefork_stop_in_the_middle_of_a_request_ends_the_child_at_once(apaches):
    # prefork's stop ends a child from its SIGTERM handler, on the thread that runs the request:
    # finalising Python there waited for the GIL its own frame held until the parent's SIGKILL.
    stop = pathlib.Path(shared_dir()) / "never"
    server = apaches([route("/", APPS / "sleepy.py")], mpm="prefork").start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"GET /spin-until?{stop} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        wait_for(lambda: os.path.exists(f"{stop}.pid"), what="the app's loop")
        stopped = server.run("-k", "stop")
        assert stopped.returncode == 0, stopped.stderr + stopped.stdout
        server.proc.wait(timeout=30)
    log = server.error_log()
    assert "wsgi: this child was stopped in the middle of a request (prefork's stop or restart): it exits at " \
           "once" in log, log[-3000:]
    assert "still did not exit" not in log, log[-3000:]


@pytest.mark.parametrize("mpm", ["event", "prefork"])
def test_a_child_whose_every_thread_is_stuck_past_its_deadline_is_replaced(apaches, mpm):
    # time.sleep(3600) is a C call where the deadline's TimeoutError cannot land: the requests
    # are answered 504, but their threads never come back, and the child served nothing again.
    server = apaches([route("/", APPS / "sleepy.py", apache="NgxWsgiRequestTimeout 500ms")], mpm=mpm, threads=2,
                     processes=1).start()
    stuck = server.worker_pids()
    assert statuses_of_concurrent(server, "/forever", 1 if mpm == "prefork" else 2) == [504] * (
        1 if mpm == "prefork" else 2)
    wait_for(lambda: "has been stuck past its NgxWsgiRequestTimeout" in server.error_log(), timeout=20,
             what="the stuck child's alert")
    wait_for(lambda: server.worker_pids() and not set(server.worker_pids()) & set(stuck), timeout=20,
             what="a fresh child")
    assert requests.get(server.url("/fast"), timeout=10).text == "/fast"
    log = server.error_log()
    assert f"wsgi: every thread of this child ({1 if mpm == 'prefork' else 2}) has been stuck past its " \
           "NgxWsgiRequestTimeout for " in log, log[-3000:]
    assert "exit signal" not in log


def test_a_crashed_child_is_replaced_and_serving_goes_on(apaches):
    server = apaches([route("/", APPS / "sleepy.py")]).start()
    before = server.worker_pids()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("/crash"), timeout=10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not server.worker_pids() or server.worker_pids() == before):
        time.sleep(0.05)
    assert server.worker_pids() and set(server.worker_pids()).isdisjoint(before)
    assert "exit signal Segmentation fault (11)" in server.error_log()
    for i in range(10):
        assert requests.get(server.url(f"/ok{i}"), timeout=10).text == f"/ok{i}"
    assert server.proc.poll() is None, "the parent keeps running"



def test_another_handler_or_an_alias_under_an_app_mount_wins(apaches):
    server = apaches([route("/", APPS / "sleepy.py")], server_extra=(
        "<Location /static/>\n SetHandler default-handler\n</Location>\n"
        "<Location /explicit/>\n SetHandler ngx-wsgi\n</Location>\n"
        "LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so\n"))
    (server.prefix / "htdocs" / "static").mkdir()
    (server.prefix / "htdocs" / "static" / "file.txt").write_text("from the document root\n")
    server.conf.write_text(server.conf.read_text() + f"Alias /files/ {server.prefix}/htdocs/static/\n")
    server.start()
    assert requests.get(server.url("/static/file.txt")).text == "from the document root\n"
    assert requests.get(server.url("/files/file.txt")).text == "from the document root\n"
    assert requests.get(server.url("/static/missing.txt")).status_code == 404
    assert requests.get(server.url("/explicit/x")).text == "/explicit/x"
    assert requests.get(server.url("/other")).text == "/other"


def test_graceful_restart_finishes_requests_in_flight_and_new_children_serve(apaches):
    import threading
    d = shared_dir()
    server = apaches([route("/", APPS / "sleepy.py"), route("/life/", APPS / "lifecycle_app.py")],
                     env={"NGX_WSGI_TEST_MARKS": d}).start()
    old = int(requests.get(server.url("/life/")).text)
    results = []
    slow = threading.Thread(target=lambda: results.append(requests.get(server.url("/slow"), timeout=30)))
    slow.start()
    time.sleep(0.5)  # let the slow request reach Python first
    server.send_signal(signal.SIGUSR1)  # graceful restart
    slow.join()
    assert [(r.status_code, r.text) for r in results] == [(200, "/slow")]
    deadline = time.monotonic() + 20
    serving = old
    while serving == old and time.monotonic() < deadline:
        time.sleep(0.05)
        serving = int(requests.get(server.url("/life/")).text)
    assert serving != old, "a new child serves after the restart"
    assert requests.get(server.url("/after")).text == "/after"
    while old not in marks(d, "finalized") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert old in marks(d, "finalized"), "the old child finalised Python"
    assert server.proc.poll() is None


def test_a_large_chunked_upload_goes_to_a_temporary_file(apaches):
    """Read whole so the app gets its CONTENT_LENGTH, but not into the child's memory."""
    import hashlib
    server = apaches([route("/", APPS / "input_app.py")]).start()
    block = os.urandom(1 << 20)
    before = requests.get(server.url("/rss")).json()

    def chunks():
        for _ in range(64):
            yield block
    result = requests.post(server.url("/sha256"), data=chunks()).json()
    assert result["length"] == 64 << 20 and result["content_length"] == str(64 << 20)
    assert result["sha256"] == hashlib.sha256(block * 64).hexdigest()
    kib = lambda v: int(v.split()[0])  # noqa: E731
    assert kib(result["rss"]["VmHWM"]) - kib(before["VmHWM"]) < 32 * 1024
    small = requests.post(server.url("/readline"), data=iter([b"a\n", b"b"])).json()
    assert small == {"parts": ["a\n", "b"], "content_length": "3", "transfer_encoding": None}


def test_app_urls_are_not_looked_up_in_the_file_system(apaches):
    """A DocumentRoot the children may not read, and <Directory /> denying everything (Debian's
    default), do not stand in the way of an app: its URLs are not files."""
    server = apaches([route("/", APPS / "sleepy.py"), route("/mount/", APPS / "sleepy.py")],
                     server_extra="DocumentRoot /root\n")
    server.start()
    assert requests.get(server.url("/x")).text == "/x"
    assert requests.get(server.url("/mount/y")).text == "/y"


def test_app_in_a_directory_section(apaches):
    server = apaches([])
    (server.prefix / "htdocs" / "dirapp").mkdir()
    server.conf.write_text(server.conf.read_text()
                           + f"<Directory {server.prefix}/htdocs/dirapp>\n NgxWsgiApp {APPS}/sleepy.py\n</Directory>\n")
    server.start()
    assert requests.get(server.url("/dirapp/x")).text == "/dirapp/x"
    assert requests.get(server.url("/elsewhere")).status_code == 404


def test_entries_of_a_request_go_to_its_virtual_host_log_at_its_level(apaches):
    bad = APPS / "misbehaving.py"
    server = apaches([route("/", f"{bad}:ok")])
    vhost_log = server.prefix / "logs" / "vhost.log"
    server.conf.write_text(server.conf.read_text() + (
        f"<VirtualHost 127.0.0.1:{server.port}>\n ServerName test.local\n</VirtualHost>\n"
        f"<VirtualHost 127.0.0.1:{server.port}>\n ServerName other.local\n ErrorLog {vhost_log}\n"
        f" <Location /raises>\n  NgxWsgiApp {bad}:raises\n </Location>\n"
        f" <Location /quiet>\n  NgxWsgiApp {bad}:errors_stream\n  LogLevel ngx_wsgi:crit\n </Location>\n"
        f" <Location /loud>\n  NgxWsgiApp {bad}:errors_stream\n </Location>\n"
        f" <Location /printer>\n  NgxWsgiApp {APPS / 'printer.py'}:to_stderr\n </Location>\n</VirtualHost>\n"))
    server.start()
    other = {"Host": "other.local"}
    # Standard error is Apache's main error log file: what the app writes there is an entry of
    # its request's virtual host log, as mod_wsgi makes it, not a bare line in the main log.
    assert requests.get(server.url("/printer"), headers=other).status_code == 200
    wait_for(lambda: re.search(r"\[ngx_wsgi:error\] \[pid \d+:tid \d+\] \[client 127\.0\.0\.1:\d+\] "
                               r"sys.stderr: written to sys.stderr", vhost_log.read_text()), what="the entry")
    assert "written to sys.stderr" not in server.error_log()
    assert requests.get(server.url("/raises"), headers=other).status_code == 500
    assert requests.get(server.url("/quiet"), headers=other).text == "logged"
    assert requests.get(server.url("/loud?x"), headers=other).text == "logged"
    log = vhost_log.read_text()
    assert re.search(r"\[ngx_wsgi:error\] \[pid \d+:tid \d+\] \[client 127\.0\.0\.1:\d+\] "
                     r'wsgi: the application raised while serving "GET /raises HTTP/1\.1"', log), log
    assert "RuntimeError: boom before headers" in log
    assert log.count("wsgi.errors: a line for the error log") == 1, "the quiet location logs at crit only"
    assert "boom before headers" not in server.error_log()


def test_x_accel_redirect_is_an_internal_redirect(apaches):
    app = APPS / "responses.py"
    server = apaches([route("= /accel", f"{app}:accel")], server_extra=(
        "LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so\n"
        f"Alias /protected/ {APPS}/protected/\n"
        f"<Directory {APPS}/protected>\n Require all granted\n</Directory>\n"
        # Only internal redirects (which set REDIRECT_STATUS) reach the protected files.
        "<Location /protected/>\n Require env REDIRECT_STATUS\n</Location>\n"))
    server.start()
    r = requests.get(server.url("/accel?/protected/hello.txt"))
    assert r.status_code == 200
    assert r.text == "protected file contents\n"
    assert r.headers["Content-Disposition"] == "attachment; filename=hello.txt"
    assert r.headers["Content-Type"] == "text/plain"
    assert "X-Accel-Redirect" not in r.headers
    assert requests.post(server.url("/accel?/protected/hello.txt"), data=b"x").text == "protected file contents\n"
    assert requests.head(server.url("/accel?/protected/hello.txt")).headers["Content-Length"] == "24"
    assert requests.get(server.url("/protected/hello.txt")).status_code == 403
    assert requests.get(server.url("/accel?/protected/missing.txt")).status_code == 404
    assert requests.get(server.url("/accel?@named")).status_code == 500
    assert 'X-Accel-Redirect "@named" was refused: named locations are nginx' in server.error_log()


def page_including(apaches, app_route, uri):
    """A started Apache with mod_include whose /page.shtml includes `uri` between "before " and
    " after"."""
    server = apaches([app_route], server_extra=(
        f"LoadModule include_module {APACHE_MODULES}/mod_include.so\n"
        f"<Directory {{htdocs}}>\n Options +Includes\n AddOutputFilter INCLUDES .shtml\n</Directory>\n"))
    server.conf.write_text(server.conf.read_text().replace("{htdocs}", str(server.prefix / "htdocs")))
    (server.prefix / "htdocs" / "page.shtml").write_text(f'before <!--#include virtual="{uri}" --> after\n')
    return server.start()


def test_an_app_included_by_ssi_sees_its_own_request_not_the_pages(apaches):
    # mod_include fills the page's CGI variables into what its subrequest copies: the app must
    # see the include's path and query (as under mod_wsgi), not the page's.
    server = page_including(apaches, route("/app/", APPS / "environ_app.py"), "/app/env?inc=1")
    r = requests.get(server.url("/page.shtml?main=1"), timeout=10)
    assert r.status_code == 200 and r.text.startswith("before {"), r.text
    e = json.loads(r.text[len("before "):r.text.rindex(" after")])
    assert (e["SCRIPT_NAME"], e["PATH_INFO"], e["QUERY_STRING"]) == ("/app", "/env", "inc=1"), e
    assert e["REQUEST_URI"] == "/app/env?inc=1"


def test_an_ssi_include_past_its_deadline_fails_the_include_not_the_page(apaches):
    # The deadline wrote its 504 page into the middle of the including page, then ended the
    # page's connection: the include fails (mod_include's error marker) and the page goes on.
    server = page_including(apaches, route("/app/", APPS / "sleepy.py", apache="NgxWsgiRequestTimeout 500ms"),
                            "/app/sleep?2")
    r = requests.get(server.url("/page.shtml"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.text == "before [an error occurred while processing this directive] after\n", r.text
    log = server.error_log()
    assert 'NgxWsgiRequestTimeout: "GET /app/sleep?2 INCLUDED" is still inside Python after 500 ms' in log
    assert 'unable to include "/app/sleep?2"' in log and "subrequest returned 504" in log


def test_an_app_response_gets_no_type_guessed_from_the_url(apaches):
    server = apaches([route("/", APPS / "sleepy.py"), route("/bare/", APPS / "input_app.py")]).start()
    r = requests.get(server.url("/report.pdf"))
    assert (r.text, r.headers["Content-Type"]) == ("/report.pdf", "text/plain")
    r = requests.get(server.url("/bare/report.pdf"))  # answered 404 with no Content-Type
    assert r.status_code == 404 and r.text == "no such way" and "Content-Type" not in r.headers


def test_timeout_recycling_and_metrics_directives_are_checked(apaches):
    for extra, message in [
        ("NgxWsgiRequestTimeout soon", 'NgxWsgiRequestTimeout: invalid time "soon"'),
        ("NgxWsgiRequestTimeout -1", 'NgxWsgiRequestTimeout: invalid time "-1"'),
        ("<VirtualHost *>\n NgxWsgiMaxRequests 10\n</VirtualHost>",
         "NgxWsgiMaxRequests cannot occur within <VirtualHost> section"),
        ("<Location /x>\n NgxWsgiMaxRSS 10m\n</Location>", "NgxWsgiMaxRSS not allowed in <Location> context"),
    ]:
        result = apaches([route("/", APPS / "sleepy.py")], server_extra=extra).run("-t")
        assert result.returncode != 0 and message in result.stderr, result.stderr
    ok = apaches([route("/", APPS / "sleepy.py", apache="NgxWsgiRequestTimeout 1500ms")],
                 server_extra="NgxWsgiRequestTimeout 30\nNgxWsgiMaxRequests 100 jitter=10\nNgxWsgiMaxRSS 1g")
    assert ok.run("-t").returncode == 0


def test_a_deadline_while_the_app_waits_for_the_body_is_answered_when_the_wait_ends(apaches):
    """The app's thread is inside Apache, reading from the client, at its deadline: the deadline
    thread cannot use the request then. The read fails as soon as it returns and the 504 goes out
    (nginx answers at the deadline itself)."""
    server = apaches([route("/", f"{APPS}/input_app.py", apache="NgxWsgiRequestTimeout 300ms")]).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"POST /read HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10\r\n\r\n12345")
        entry = 'NgxWsgiRequestTimeout: "POST /read HTTP/1.1" is still inside Python after 300 ms'
        wait_for(lambda: entry in server.error_log(), what="the deadline")
        s.sendall(b"67890")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout"), answer
    assert b"Connection: close" in answer


@pytest.mark.parametrize("mpm, piped_log", [("event", False), ("worker", False), ("prefork", False),
                                             ("event", True)])
def test_recycling_under_each_mpm(apaches, mpm, piped_log):
    """The child leaves the way the MPM makes it leave for MaxConnectionsPerChild: requests in
    flight finish, none is refused, and the parent starts another child. (A piped error log is
    a pipe too, opened next to the MPM's pipe of death.)"""
    server = apaches([route("/", APPS / "lifecycle_app.py")], mpm=mpm, server_extra="NgxWsgiMaxRequests 10",
                     env={"NGX_WSGI_TEST_MARKS": shared_dir()})
    if piped_log:
        server.conf.write_text(server.conf.read_text().replace(
            f"ErrorLog {server.prefix}/logs/error.log", f'ErrorLog "|$/bin/cat >> {server.prefix}/logs/error.log"'))
    server.start()
    # Under the event MPM a recycling child serves on for its keep-alive drain (2 s).
    served_by = set()
    deadline = time.monotonic() + 60
    while len(served_by) < 4:
        assert time.monotonic() < deadline, served_by
        r = requests.get(server.url("/"), headers={"Connection": "close"}, timeout=30)
        assert r.status_code == 200
        served_by.add(int(r.text))
        time.sleep(0.05)
    log = server.error_log()
    assert log.count("wsgi: this child served 10 requests (NgxWsgiMaxRequests); recycling it") >= 3, log
    assert len(served_by) >= 4, "each child served its ten requests and was replaced"
    assert "cannot recycle" not in log and "exit signal" not in log


def keep_alive_client(port, seconds):
    """GETs / over one kept connection after another for `seconds`: how many requests were
    answered, and how many met a kept connection (one that had answered) closed without its last
    response's `Connection: close` having said so. (A new connection closed before its first
    answer is the MPM's own race at any child's stop, static files included.)"""
    answered = lost = 0
    end = time.monotonic() + seconds
    conn = None
    while time.monotonic() < end:
        if conn is None:
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            reader, kept = conn.makefile("rb"), False
        conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status = reader.readline()
        if not status:
            lost += kept
            conn.close()
            conn = None
            continue
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        reader.read(int(headers.get("content-length", 0)))
        answered += 1
        kept = True
        if headers.get("connection") == "close":
            conn.close()
            conn = None
    return answered, lost


@pytest.mark.parametrize("mpm", ["event", "worker", "prefork"])
def test_recycling_loses_no_request_of_a_kept_connection(apaches, mpm):
    """A recycling child says `Connection: close` before it stops where the MPM would close a
    kept connection under its client's next request (event, worker): that request goes to a
    new connection instead of being lost."""
    import concurrent.futures
    server = apaches([route("/", APPS / "lifecycle_app.py")], mpm=mpm, server_extra="NgxWsgiMaxRequests 50",
                     env={"NGX_WSGI_TEST_MARKS": shared_dir()}).start()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: keep_alive_client(server.port, 6), range(8)))
    answered, lost = sum(a for a, _ in results), sum(l for _, l in results)
    log = server.error_log()
    recycled = log.count("wsgi: this child served 50 requests (NgxWsgiMaxRequests); recycling it")
    assert recycled >= 2, (answered, recycled)
    # How each drain ended tells a connection idle past its bound from a loss of the module's.
    drains = [line for line in log.splitlines() if "drain is over" in line]
    assert lost == 0, f"{lost} requests of {answered + lost} met a kept connection closed ({recycled} recycled): {drains}"


@pytest.mark.parametrize("mpm", ["event", "worker"])
def test_a_recycling_child_stops_taking_connections_once_those_it_had_are_drained(apaches, mpm):
    """The drain waits for the connections the child had when it began, a static file's kept
    connection among them (its next response says `Connection: close` too), then the child
    stops. It waited 2 s whatever it had, taking new connections all along, one request each:
    hundreds of requests past its NgxWsgiMaxRequests under load, clients reconnecting to it."""
    server = apaches([route("/app/", APPS / "lifecycle_app.py")], mpm=mpm, server_extra="NgxWsgiMaxRequests 5",
                     env={"NGX_WSGI_TEST_MARKS": shared_dir()})
    (server.prefix / "htdocs" / "file.txt").write_text("static\n")
    server.start()
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    kept.request("GET", "/file.txt")
    r = kept.getresponse()
    assert (r.read(), r.getheader("Connection")) == (b"static\n", None)
    first = int(requests.get(server.url("/app/"), headers={"Connection": "close"}, timeout=10).text)
    for _ in range(4):
        assert int(requests.get(server.url("/app/"), headers={"Connection": "close"}, timeout=10).text) == first
    wait_for(lambda: "recycling it" in server.error_log(), what="the child's recycling")
    # The child drains: the kept connection's next response closes it.
    kept.request("GET", "/file.txt")
    r = kept.getresponse()
    assert (r.read(), r.getheader("Connection")) == (b"static\n", "close")
    kept.close()
    # Then it stops, the connections it had closed, and a new connection is a new child's.
    wait_for(lambda: "wsgi: this child's drain is over (the connections it had have closed); it stops"
             in server.error_log(), what="the drain's end")
    deadline = time.monotonic() + 30
    while int(requests.get(server.url("/app/"), headers={"Connection": "close"}, timeout=10).text) == first:
        assert time.monotonic() < deadline, "a new child"
    log = server.error_log()
    assert "cannot recycle" not in log and "exit signal" not in log, log[-3000:]


def test_https_variable_sets_the_url_scheme_as_under_mod_wsgi(apaches):
    # TLS ended at a balancer Apache trusts (here 127.0.0.1, the test's client): an <If> on its
    # address and its header sets HTTPS, which mod_wsgi reads for wsgi.url_scheme too.
    server = apaches([route("/", "environ_app")], server_extra=(
        f"NgxWsgiPythonPath {APPS}\nLoadModule env_module {APACHE_MODULES}/mod_env.so\n"
        "<If \"-R '127.0.0.1' && %{HTTP:X-Forwarded-Proto} == 'https'\">\n SetEnv HTTPS on\n</If>\n")).start()
    told = requests.get(server.url("/"), headers={"X-Forwarded-Proto": "https"}).json()
    assert (told["wsgi.url_scheme"], told["HTTPS"]) == ("https", "on")
    plain = requests.get(server.url("/")).json()
    assert plain["wsgi.url_scheme"] == "http" and "HTTPS" not in plain


@pytest.mark.parametrize("mpm", ["event", "worker", "prefork"])
def test_a_recycling_child_answers_the_next_request_of_a_connection_its_streamed_response_kept(apaches, mpm):
    """The streamed response that makes the child recycle had promised keep-alive with its head:
    the connection was closed after it (under prefork, the child stopped after it), and the
    request its client sent next, at once, was lost."""
    server = apaches([route("/", f"{APPS / 'streaming.py'}:brief")], mpm=mpm, server_extra="NgxWsgiMaxRequests 1",
                     processes=2 if mpm == "prefork" else 1).start()
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    kept.request("GET", "/?0.3")
    r = kept.getresponse()
    assert r.getheader("Connection") != "close" and r.read() == b"firstlast", r.getheaders()
    kept.request("GET", "/")
    r = kept.getresponse()
    assert (r.status, r.read(), r.getheader("Connection")) == (200, b"firstlast", "close")
    kept.close()
    wait_for(lambda: "recycling it" in server.error_log(), what="the child's recycling")


@pytest.mark.parametrize("setting", ["EnableMMAP Off", "EnableSendfile On"])
def test_a_file_wrapper_sends_its_file_as_apache_sends_files(apaches, setting):
    # Without a memory map where `EnableMMAP Off` forbids one (a file on NFS shrunk while it goes
    # out is a SIGBUS for the whole child wherever the child reads the mapping: TLS, deflate), and
    # with sendfile where `EnableSendfile On` allows it (which maps nothing): the file bucket
    # was memory-mapped whatever the settings said.
    size = 4 << 20  # as large as Apache maps a file bucket whole
    big = pathlib.Path(shared_dir()) / "big.bin"
    big.write_bytes(b"x" * size)
    big.chmod(0o644)
    # Small socket buffers on both ends: the child cannot write the file at once.
    server = apaches([route("/", f"{APPS / 'responses.py'}:file_wrapper_of", apache=setting)],
                     server_extra="SendBufferSize 65536").start()
    child = server.worker_pids()[0]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(f"GET /?{big} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        received = s.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 OK")
        time.sleep(0.5)  # the child waits for the client to take more, its file bucket half sent
        mapped = str(big) in pathlib.Path(f"/proc/{child}/maps").read_text()
        while chunk := s.recv(1 << 20):
            received += chunk
    assert received.endswith(b"\r\n\r\n" + b"x" * size), received[:300]
    assert not mapped, "the file was memory-mapped"


def test_a_child_alone_by_circumstance_recycles_within_its_wait_with_no_further_request(apaches):
    # One child of a server that may run four (the parent keeps one: StartServers 1, its spare
    # threads enough): due, it waits for a sibling that never comes, 3 s at most, then goes,
    # whether or not another request comes to it (it looked again only at a request's end).
    server = apaches([route("/", APPS / "sleepy.py")], server_extra="NgxWsgiMaxRequests 5")
    server.conf.write_text(server.conf.read_text().replace("ServerLimit 1\n", "ServerLimit 4\n").replace(
        "MaxRequestWorkers 16\n", "MaxRequestWorkers 64\n"))
    server.start()
    first = server.worker_pids()
    assert [requests.get(server.url("/fast"), timeout=10).status_code for _ in range(5)] == [200] * 5
    wait_for(lambda: "wsgi: this child served 5 requests (NgxWsgiMaxRequests); recycling it (after " in
             server.error_log(), timeout=15, what="the recycling, without another request")
    wait_for(lambda: server.worker_pids() and not set(server.worker_pids()) & set(first), timeout=15,
             what="a fresh child")


OVER_THE_LIMIT = b"800\r\n" + b"x" * 0x800 + b"\r\n0\r\n\r\n"
BROKEN_CHUNKS = b"zz\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("buffered, path, body, status", [
    (True, "/read", OVER_THE_LIMIT, 413),
    (False, "/read", OVER_THE_LIMIT, 413),
    (False, "/read_or_say", OVER_THE_LIMIT, 413),
    (False, "/read_or_say", BROKEN_CHUNKS, 400),
    (True, "/read_or_say", BROKEN_CHUNKS, 400),
])
def test_a_body_apache_refuses_gets_apaches_answer_alone(apaches, buffered, path, body, status):
    # Apache's input filter answers a chunked body over LimitRequestBody (413) or with broken
    # framing (400) itself, and ends the response: the module's own answer after it (the read
    # whole's 400, the app's 500 or its answer to the caught OSError) went out as raw bytes on
    # the same connection.
    server = apaches([route("/", APPS / "input_app.py", apache="LimitRequestBody 1000\nNgxWsgiRequestBuffering "
                                                              + ("On" if buffered else "Off"))]).start()
    data = raw_request(server.port, f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    .encode() + body)
    assert data.startswith(f"HTTP/1.1 {status} ".encode()), data
    assert data.count(b"HTTP/1.1 ") == data.count(b"</html>") == 1 and b"caught" not in data, data
    assert requests.get(server.url("/read"), timeout=10).status_code == 200
    if path == "/read" and not buffered:
        # The app's read raised, and its traceback says why.
        wait_for(lambda: "Apache refused the request body (over LimitRequestBody, or broken chunked framing) and "
                         f"answered the request itself with a {status}" in server.error_log(), what="the traceback")


@pytest.mark.parametrize("body", [OVER_THE_LIMIT, BROKEN_CHUNKS])
def test_a_body_apache_refuses_after_the_head_went_out_ends_the_response_there(apaches, body):
    # Apache's error meets no header filter once the head is out: it ends the response (its last
    # chunk), and the read ended as if the body had (a broken chunk's bytes taken for the body);
    # the app's answer then went out after the response's end.
    server = apaches([route("/", APPS / "input_app.py", apache="LimitRequestBody 1000\nNgxWsgiRequestBuffering Off")]
                     ).start()
    data = raw_request(server.port, b"POST /start_then_read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + body)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n8\r\nstarted\n\r\n0\r\n\r\n"), data
    assert b"caught" not in data and b"read " not in data, data


def answering_app(text, path=None):
    """An app file (in a directory the children can read) whose app answers `text`."""
    path = path or pathlib.Path(shared_dir()) / "app.py"
    path.write_text('def application(environ, start_response):\n'
                    '    start_response("200 OK", [("Content-Type", "text/plain")])\n'
                    f'    return [b"{text}"]\n')
    return path


@pytest.mark.parametrize("mpm", ["event", "prefork"])
def test_a_child_that_cannot_load_its_app_recycles_and_a_fresh_one_tries_again(apaches, mpm):
    # Its file broken on disk since the check (a deploy under way): the child Apache started in
    # place of a dead one answered 500 for ever, the file fixed or not (mod_wsgi retries). Under
    # prefork the stop is a signal to the child's main thread, asked for by a helper thread.
    app = answering_app("one")
    server = apaches([route("/", str(app))], mpm=mpm).start()
    assert requests.get(server.url("/"), timeout=10).text == "one"
    first = server.worker_pids()
    app.write_text("def application(:\n")
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server.worker_pids() and not set(server.worker_pids()) & set(first), what="a fresh child")
    assert [requests.get(server.url("/"), timeout=10).status_code for _ in range(8)] == [500] * 8
    # Once per child, not a line per request (a flood under load).
    logged = server.error_log().count("was not loaded in this process")
    assert 1 <= logged <= len(server.worker_pids()) < 8, server.error_log()[-3000:]
    answering_app("fixed", app)
    wait_for(lambda: requests.get(server.url("/"), timeout=10).text == "fixed", timeout=40,
             what="a fresh child loading the fixed app")
    assert "wsgi: this child could not load its apps at its start; recycling it" in server.error_log()


@pytest.mark.parametrize("command", ["stop", "graceful-stop"])
def test_a_stop_is_not_refused_while_an_app_does_not_import(apaches, command):
    # `apache2 -k stop` reads the configuration only to signal the running server (Debian's
    # unit stops it with graceful-stop): a deploy half done must not keep it running. A
    # graceful restart, which starts children with the configuration, is still refused.
    app = answering_app("one")
    server = apaches([route("/", str(app))]).start()
    assert requests.get(server.url("/"), timeout=10).text == "one"
    app.write_text("def application(:\n")
    refused = server.run("-k", "graceful")
    assert refused.returncode != 0 and "cannot be loaded" in refused.stderr + refused.stdout
    assert requests.get(server.url("/"), timeout=10).text == "one"
    stopped = server.run("-k", command)
    assert stopped.returncode == 0, stopped.stderr + stopped.stdout
    server.proc.wait(timeout=30)


@pytest.mark.parametrize("framing, path", [("length", "/app/read"), ("chunked", "/app/read"), ("broken", "/app/read"),
                                           ("length", "/missing.html")])
@pytest.mark.parametrize("buffering", ["On", "Off"])
def test_an_error_document_in_python_for_a_refused_body_gets_no_body(apaches, framing, path, buffering):
    # ErrorDocument 413 (LimitRequestBody) pointing at the app: Apache has refused the body. The
    # app's page was never shown: its read of the same body was refused again (a Content-Length
    # over the limit), and Apache answered with its own page, saying the ErrorDocument failed.
    # (A chunked body refused as it arrives ran the page, as Apache's input filter's error does.)
    # A body Apache threw away before its 404 left the app a length with no body.
    server = apaches([route("/app/", APPS / "input_app.py",
                            apache=f"NgxWsgiRequestBuffering {buffering}")],
                     server_extra="LimitRequestBody 1000\nErrorDocument 413 /app/sha256\n"
                                  "ErrorDocument 400 /app/sha256\nErrorDocument 404 /app/sha256\n").start()
    answer = post_3000_bytes(server.port, path, framing)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer  # the app's status, as with mod_wsgi
    seen = json.loads(answer[answer.index(b"{"):])
    assert (seen["length"], seen["content_length"]) == (0, "0"), seen
    assert requests.get(server.url("/app/read"), timeout=10).status_code == 200
