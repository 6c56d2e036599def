"""Misbehaving and crashing apps: a 500 (or a cut connection once the body started) and a
traceback in the error log; the worker (nginx) or child (Apache) always survives and keeps
serving."""
import concurrent.futures
import re
import socket
import subprocess
import time

import pytest
import requests

from conftest import APPS, asgi_location, location, raw_request, route, wait_for

APP = APPS / "misbehaving.py"

FAIL_WITH_500 = {
    "raises": "RuntimeError: boom before headers",
    "str_body": "response body items must be bytes, not str",
    "str_items_generator": "response body items must be bytes, not str",
    "non_iterable": "'int' object is not iterable",
    "returns_none": "'NoneType' object is not iterable",
    "start_response_twice": "start_response() called a second time without exc_info",
    "never_starts": "produced body data before calling start_response()",
    "never_starts_empty": "returned without calling start_response()",
    "bad_status_no_reason": 'is not "NNN Reason-Phrase"',
    "bad_status_text": 'is not "NNN Reason-Phrase"',
    "bad_status_bytes": "status must be str, not bytes",
    "crlf_in_header": "contains a control character",
    "bad_header_name": "is not an HTTP token",
    "headers_not_list": "response headers must be a list, not tuple",
    "header_not_str": "header name and value must be str",
    "hop_by_hop_header": "is hop-by-hop",
    "non_latin1_header": "has a character outside latin-1",
    "generator_raises_first": "ValueError: raised on the first next()",
    "sys_exit": "SystemExit: 3",
    "keyboard_interrupt": "KeyboardInterrupt",
    "write_str": "write() argument must be bytes, not str",
    "recursion": "RecursionError",
    "informational_status": "cannot be informational",
}
NAMES = list(FAIL_WITH_500) + ["ok", "generator_raises_midway", "close_raises", "errors_stream",
                               "errors_unfinished_line", "deep_traceback", "python_logging"]


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory([route(f"= /{n}", f"{APP}:{n}") for n in NAMES]).start()


@pytest.mark.parametrize("name", list(FAIL_WITH_500))
def test_broken_app_gets_500_with_traceback_and_worker_survives(server, name):
    workers = server.worker_pids()
    r = requests.get(server.url(f"/{name}?q=1"))
    assert r.status_code == 500
    assert "500 Internal Server Error" in r.text
    log = server.error_log()
    assert f'while serving "GET /{name}?q=1 HTTP/1.1", client: 127.0.0.1' in log
    assert FAIL_WITH_500[name] in log, log[-3000:]
    assert requests.get(server.url("/ok")).text == "still serving"
    assert server.worker_pids() == workers


def test_os_exit_in_a_request_is_logged_before_the_worker_ends(wsgi_factory):
    # os._exit() skips every exception handler: the client got no answer and the log had only
    # nginx's notice of a worker that exited (below the default level). A child the app forks
    # ends with os._exit() as it should: not logged.
    server = wsgi_factory([route("= /os_exit", f"{APP}:os_exit"),
                           route("= /child_os_exits", f"{APP}:child_os_exits"),
                           route("= /ok", f"{APP}:ok")]).start()
    assert requests.get(server.url("/child_os_exits"), timeout=30).text == "5"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.url("/os_exit?q=1"), timeout=30)
    wait_for(lambda: "the app called os._exit(3)" in server.error_log(), what="the os._exit entry")
    log = server.error_log()
    assert log.count("called os._exit(") == 1, log[-3000:]
    assert re.search(r"\[(ngx_wsgi:)?error\] .*the app called os\._exit\(3\): this process ends now", log)
    assert re.search(r'File ".*misbehaving\.py", line \d+, in os_exit', log), log[-3000:]
    wait_for(lambda: requests.get(server.url("/ok"), timeout=30).text == "still serving",
             what="a new worker serving")


def test_traceback_names_the_app_frame(server):
    requests.get(server.url("/raises"))
    log = server.error_log()
    assert "Traceback (most recent call last):" in log
    assert re.search(r'File ".*misbehaving.py", line \d+, in raises', log)


def test_exception_mid_body_cuts_the_connection(server):
    data = raw_request(server.port, b"GET /generator_raises_midway HTTP/1.1\r\nHost: t\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"partial " in body
    assert not body.endswith(b"0\r\n\r\n"), "a failed response must not end cleanly"
    assert "ValueError: raised mid-body" in server.error_log()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(server.url("/generator_raises_midway"))
    assert requests.get(server.url("/ok")).text == "still serving"


def read_to_the_end(port, request):
    """What the server sent, and how the connection ended: "closed" (a clean end of stream,
    which ends a response delimited by its connection's close) or "reset"."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            return got, "reset"
    return got, "closed"


def test_an_exception_mid_body_resets_a_connection_whose_close_ends_the_response(server):
    # HTTP/1.0: no chunked end to miss, a close reads as the whole response; both servers.
    got, end = read_to_the_end(server.port, b"GET /generator_raises_midway HTTP/1.0\r\nHost: t\r\n\r\n")
    assert b"chunked" not in got.lower() and b"content-length" not in got.lower(), got
    assert end == "reset", got
    assert requests.get(server.url("/ok")).text == "still serving"


def test_a_cut_response_delimited_by_its_close_is_reset(nginx_factory):
    # HTTP/1.0 (or nginx's proxy_pass in front, whose default proxy_http_version is 1.0) has no
    # chunked end to miss: a close read as the end of the response, its part taken for the
    # whole (a proxy passed it on as a complete chunked response). WSGI and ASGI.
    server = nginx_factory(location("= /generator_raises_midway", f"{APP}:generator_raises_midway")
                           + location("/timed/", f"{APPS / 'streaming.py'}:ticking_events", "wsgi_read_timeout 1s;")
                           + asgi_location("/", APPS / "asgi_bad.py")).start()
    # The app raises mid-body (WSGI, ASGI); its deadline cuts it (while its thread sleeps).
    for path in ("/generator_raises_midway", "/raise-after-start", "/timed/?plain&0.3"):
        got, end = read_to_the_end(server.port, f"GET {path} HTTP/1.0\r\nHost: t\r\n\r\n".encode())
        assert got.startswith(b"HTTP/1.1 200") or got == b"", got
        assert b"chunked" not in got.lower() and b"content-length" not in got.lower(), got
        assert end == "reset", (path, got)
        # Over HTTP/1.1 the missing last chunk says so: the connection closes as before.
        got, end = read_to_the_end(server.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert b"Transfer-Encoding: chunked" in got and not got.endswith(b"0\r\n\r\n"), got
        assert end == "closed", (path, got)
    # A whole response to HTTP/1.0 ends with a clean close, as ever.
    got, end = read_to_the_end(server.port, b"GET /ok HTTP/1.0\r\nHost: t\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200") and end == "closed", got


def test_a_cut_on_a_unix_domain_listener_still_ends_at_its_deadline(nginx_factory, tmp_path):
    # A Unix-domain socket has no reset: the cut is the close it was, at the deadline, while
    # the app's thread still waits (in C code, where the TimeoutError does not land).
    sock = tmp_path / "s.sock"
    server = nginx_factory(location("/stream/", f"{APPS / 'streaming.py'}:events", "wsgi_read_timeout 500ms;")
                           + location("/release/", f"{APPS / 'streaming.py'}:release"),
                           server_extra=f"listen unix:{sock};").start()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b"GET /stream/?unix-cut HTTP/1.0\r\nHost: t\r\n\r\n")
        got = b""
        # The app waits 20 s for its release, which comes after: a cut that waited for its
        # thread would time this read out.
        while chunk := s.recv(65536):
            got += chunk
    requests.get(server.url("/release/?unix-cut"), timeout=10)
    assert got.startswith(b"HTTP/1.1 200") and b"data: first" in got, got


def test_failing_close_is_logged_and_response_stands(server):
    r = requests.get(server.url("/close_raises"))
    assert r.status_code == 200 and r.content == b"body then a failing close"
    # Under nginx the response ends before close() runs (as under gunicorn).
    wait_for(lambda: "RuntimeError: close() failed" in server.error_log(), what="close()'s traceback")


def test_wsgi_errors_goes_to_the_error_log(server):
    assert requests.get(server.url("/errors_stream")).text == "logged"
    log = server.error_log()
    assert "wsgi.errors: a line for the error log" in log
    assert "wsgi.errors: second line" in log


def test_unfinished_wsgi_errors_line_is_logged_when_the_request_ends(server):
    assert requests.get(server.url("/errors_unfinished_line")).text == "logged"
    assert "wsgi.errors: no newline at the end" in server.error_log()


def test_worker_never_restarted_by_faults(server):
    workers = server.worker_pids()
    for name in FAIL_WITH_500:
        requests.get(server.url(f"/{name}"))
    assert server.worker_pids() == workers
    assert "exited on signal" not in server.error_log()
    assert requests.get(server.url("/ok")).status_code == 200


def test_a_long_traceback_is_one_log_entry_with_the_request_id(server):
    r = requests.get(server.url("/deep_traceback"))
    assert r.status_code == 500
    log = server.error_log()
    start = log.index('while serving "GET /deep_traceback HTTP/1.1"')
    entry = log[log.rindex("\n", 0, start) + 1:]
    entry = entry[:entry.index("RuntimeError: wrapped 20 times")]
    assert "ValueError: at the bottom of a long stack" in entry
    assert len(entry) > 4000, "the traceback is longer than an nginx entry"
    if server.kind == "apache":
        # Apache escapes line ends inside an entry, so a traceback is one entry per line (as
        # mod_wsgi writes them), each marked as the module's, the first with the request.
        lines = entry.splitlines()
        assert len(lines) > 40 and all("[ngx_wsgi:error]" in line for line in lines)
        assert re.search(r"client: 127\.0\.0\.1, request_id: \S+$", lines[0])
        return
    assert entry.count(" [error] ") == 1, "one entry, not split"
    assert re.search(r"client: 127\.0\.0\.1, request_id: [0-9a-f]{32}\n", entry)


def test_python_logging_reaches_the_error_log(server):
    assert requests.get(server.url("/python_logging")).text == "logged"
    log = server.error_log()
    # nginx: "[warn] ... request_id: <32 hex>"; Apache: "[ngx_wsgi:warn] ... request_id: <its log id>".
    request_id = r"[0-9a-f]{32}" if server.kind == "nginx" else r"\S+"
    assert re.search(r"\[(ngx_wsgi:)?warn\] .*python: myapp\.views: disk almost full: 93%, request_id: "
                     + request_id, log)
    assert "not shown" not in log
    wait_for(lambda: "through the app's own handler" in server.error_log(), what="the app's handler's line")
    assert server.error_log().count("through the app's own handler") == 1, "once, not again through the server's"
    assert "python: somelib: a library's warning" in log
    assert "python: myapp.errors_only: below its handler's level" in log


def test_logging_configured_after_the_import_takes_effect(wsgi_factory):
    # The server's handler on the root logger made a later basicConfig() do nothing: the
    # level stayed WARNING and the app's INFO lines never appeared (they do under gunicorn).
    # One that names a destination of its own (a file) has the server's handler step aside.
    app = APPS / "lazy_logging.py"
    server = wsgi_factory([route("/refused", f"{app}:refused_then_warns"),
                           route("/configures", f"{app}:configures_then_logs")]).start()
    assert requests.get(server.url("/refused")).text == "warned"
    wait_for(lambda: "python: myapp: after a refused basicConfig" in server.error_log(),
             what="the warning through the server's handler, still there")
    assert requests.get(server.url("/configures")).text == "configured"
    wait_for(lambda: "lazy INFO myapp: seen at info after a lazy basicConfig" in server.error_log(),
             what="the app's INFO line in its own format")
    # Still the server's handler: the entry keeps its level (through standard error it would
    # have been an error).
    assert re.search(r"\[(ngx_wsgi:)?info\] .*python: myapp: lazy INFO myapp: seen at info after a "
                     r"lazy basicConfig", server.error_log()), server.error_log()[-3000:]


def test_a_bare_basic_config_at_import_logs_through_the_server(wsgi_factory):
    # Its handler wrote to standard error, the server's log, where every record became an
    # `error` entry, and a traceback one entry a line (Plone's log under the module).
    server = wsgi_factory([route("/", f"{APPS / 'eager_logging.py'}:application")]).start()
    assert requests.get(server.url("/")).text == "logged"
    wait_for(lambda: "a failure with its traceback" in server.error_log(), what="the app's lines")
    log = server.error_log()
    assert re.search(r"\[(ngx_wsgi:)?info\] .*python: eager: an info line", log), log[-3000:]
    assert re.search(r"\[(ngx_wsgi:)?warn\] .*python: eager: a warning", log), log[-3000:]
    # So does a Python warning, at `warn` (through standard error it was an `error` entry).
    assert re.search(r"\[(ngx_wsgi:)?warn\] .*python: py.warnings: .*UserWarning: a library's warning", log), log[-3000:]
    failure = next(line for line in log.splitlines() if "a failure with its traceback" in line)
    assert re.search(r"\[(ngx_wsgi:)?error\] .*python: eager: a failure with its traceback", failure), failure
    assert "sys.stderr" not in log and "INFO:eager" not in log, log[-3000:]
    # A handler to standard output is the app's to keep: that may be a journal, not this log.
    stdout = wsgi_factory([route("/", f"{APPS / 'eager_stdout_logging.py'}:application")]).start()
    assert requests.get(stdout.url("/")).text == "StreamHandler"
    # The traceback is the same entry's (its lines follow, with no entry head of their own;
    # Apache heads each line of an entry).
    tail = log[log.index("a failure with its traceback"):]
    assert server.kind == "apache" or re.match(r"a failure with its traceback[^\n]*\nTraceback \(most recent call last\):", tail), tail[:500]


def test_the_log_line_id_is_the_requests_request_id(nginx_factory):
    """The id on a request's error-log lines is the `$request_id` that the access log and
    `wsgi_param` see, also when nothing asked for it before the app ran."""
    srv = nginx_factory(
        location("= /errors_stream", f"{APP}:errors_stream")
        + location("= /with_param", f"{APP}:errors_stream", "wsgi_param REQUEST_ID $request_id;"),
        http_extra="log_format ids '$uri $request_id';",
        server_extra="access_log logs/access.log ids;").start()
    for path in ("/errors_stream", "/with_param", "/errors_stream"):
        assert requests.get(srv.url(path)).text == "logged"
    srv.stop()
    access = (srv.prefix / "logs/access.log").read_text().split("\n")
    logged = re.findall(r"a line for the error log, request_id: ([0-9a-f]{32})", srv.error_log())
    assert [line.split()[1] for line in access if line] == logged
    assert len(set(logged)) == 3


def test_entries_from_python_threads_reach_a_syslog_error_log(nginx_factory):
    """nginx's syslog writer belongs to the event loop: entries made on Python's threads are
    handed to it, and arrive whole (tracebacks included)."""
    import socket as _socket
    sink = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(20)
    port = sink.getsockname()[1]
    server = nginx_factory(
        location("/", f"{APPS}/misbehaving.py:errors_stream")
        + location("/raises", f"{APPS}/misbehaving.py:raises"),
        main_extra=f"error_log syslog:server=127.0.0.1:{port},tag=ngxwsgi info;",
    ).start()
    for _ in range(20):
        assert requests.get(server.url("/")).status_code == 200
    assert requests.get(server.url("/raises")).status_code == 500
    received = []
    while not (any("second line" in m for m in received) and any("Traceback" in m for m in received)):
        received.append(sink.recv(65536).decode(errors="replace"))
    sink.close()
    lines = [m for m in received if "wsgi.errors: a line for the error log" in m]
    assert lines and all("ngxwsgi:" in m for m in lines), received[:5]
    assert "exited on signal" not in server.error_log()


def test_the_exit_deadlines_last_words_reach_a_syslog_error_log(nginx_factory):
    """An exit stuck in an atexit handler is ended by a watcher thread while the event loop, the
    syslog writer's thread, is the stuck one: its entry is written at once, not queued for ever."""
    import socket as _socket
    sink = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(30)
    port = sink.getsockname()[1]
    server = nginx_factory(
        location("/", APPS / "stuck_exit.py"),
        main_extra=f"error_log syslog:server=127.0.0.1:{port},tag=ngxwsgi info;",
        http_extra="wsgi_shutdown_timeout 1s;",
    ).start()
    assert requests.get(server.url("/?atexit")).text == "registered"
    assert server.stop(timeout=60) == 0
    said = "wsgi: Python's finalisation (atexit handlers included) still running after wsgi_shutdown_timeout " \
           "(1000 ms); the process exits now"
    received = []
    while not any(said in m for m in received):
        received.append(sink.recv(65536).decode(errors="replace"))
    sink.close()
    assert "[error]" in next(m for m in received if said in m)


@pytest.mark.parametrize("query", ["", "clear"])
def test_pythons_teardown_after_the_atexit_handlers_is_not_cut_at_the_shutdown_timeout(nginx_factory, tmp_path,
                                                                                       query):
    """The shutdown timeout bounds the app's threads and atexit handlers; Python's own teardown
    after them (a large app's: seconds) has 30 s at least: cut at the timeout, its finalisers
    (a database connection's close) did not run, and the worker exited with code 1. So too
    when the app cleared every atexit handler, the server's with them."""
    tmp_path.chmod(0o777)
    server = nginx_factory(location("/", APPS / "slow_teardown.py"), http_extra="wsgi_shutdown_timeout 1s;",
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    assert requests.get(server.url(f"/?{query}")).text == "served"
    (worker,) = server.worker_pids()
    assert server.stop(timeout=60) == 0
    assert (tmp_path / f"teardown-{worker}").exists(), "the finaliser ran"
    log = server.error_log()
    assert "still running after" not in log and f"worker process {worker} exited with code 0" in log, log[-3000:]


def test_a_thread_holding_the_gil_for_ever_cannot_hold_the_exit(nginx_factory):
    """The worker's exit needs the GIL to finalise Python: a thread that never lets it go (a C
    call made with it held) ends the wait after wsgi_shutdown_timeout instead of keeping the
    old worker for ever."""
    server = nginx_factory(location("/", APPS / "stuck_exit.py"), http_extra="wsgi_shutdown_timeout 1s;").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/?gil"), timeout=10).text == "registered"
    wait_for(lambda: "holding the GIL from now on" in server.error_log(), what="the thread's call")
    time.sleep(0.5)  # from its print to its call
    assert server.stop(timeout=60) == 0
    log = server.error_log()
    assert ("wsgi: the wait for the GIL (a thread of the app's holds it in C code) still running after "
            "wsgi_shutdown_timeout (1000 ms); the process exits now") in log, log[-3000:]
    assert f"worker process {worker} exited with code 1" in log


def start_with_standard_output_at_dev_null(server):
    """Starts `server` as nginx's daemon leaves its workers: standard output at /dev/null."""
    server.stderr = open(server.prefix / "stderr.log", "wb")
    server.proc = subprocess.Popen([server.binary, "-p", str(server.prefix), "-c", str(server.conf)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=server.stderr)

    def serving():
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except OSError:
            return False
        return bool(server.worker_pids())
    wait_for(serving, what="the server")
    return server


def test_text_with_a_lone_surrogate_is_logged_escaped_not_an_error(nginx_factory):
    # os.listdir's name for a file that is not UTF-8 holds a lone surrogate: print(), wsgi.errors
    # and logging write it as CPython's stderr does (backslashreplace), as gunicorn logs it, where
    # the daemon's standard output and error are the module's streams.
    server = start_with_standard_output_at_dev_null(nginx_factory(location("/", APPS / "surrogates.py")))
    r = requests.get(server.url("/"), timeout=10)
    assert (r.status_code, r.text) == (200, "backslashreplace backslashreplace")
    log = server.error_log()
    for line in ("sys.stdout: print: caf\\udce9.txt", "sys.stderr: stderr: caf\\udce9.txt",
                 "wsgi.errors: caf\\udce9.txt", "app: logging: could not find caf\\udce9.txt"):
        assert line in log, (line, log[-3000:])
    assert "Logging error" not in log and "UnicodeEncodeError" not in log


def test_print_reaches_the_error_log_where_standard_output_is_dev_null(nginx_factory):
    """nginx's daemon points the workers' standard output at /dev/null: what an app prints is
    logged instead (an entry per line, with the request's id), not lost."""
    server = start_with_standard_output_at_dev_null(
        nginx_factory(location("/", APPS / "printer.py") + asgi_location("/asgi/", f"{APPS / 'printer.py'}:asgi_app")))
    r = requests.get(server.url("/page"), timeout=10)
    assert (r.status_code, r.text) == (200, "False utf-8 2")
    log = server.error_log()
    assert re.search(r"\[error\] \d+#\d+: sys.stdout: printed at import$", log, re.M), log[-2000:]
    assert re.search(r"sys.stdout: printed for /page, request_id: [0-9a-f]{32}$", log, re.M)
    assert re.search(r"sys.stdout: no newline yet, request_id: [0-9a-f]{32}$", log, re.M), "flush() logs it"
    assert "sys.stdout: printed by a thread" in log
    assert "sys.stdout: bytes written, caf\u00e9, request_id:" in log
    assert "sys.stdout: through a TextIOWrapper, request_id:" in log
    assert "sys.stdout: still printing after it closed its buffer, request_id:" in log
    # Standard error is the error log file: an entry too, not a bare line.
    assert re.search(r"\[error\] \d+#\d+: sys.stderr: written to sys.stderr, request_id: [0-9a-f]{32}$", log, re.M)
    assert requests.get(server.url("/asgi/x"), timeout=10).text == "printed"
    wait_for(lambda: re.search(r"sys.stdout: printed by an ASGI task for /asgi/x, request_id: [0-9a-f]{32}$",
                               server.error_log(), re.M), what="the ASGI task's line, with its request's id")
    # ASGI tasks share the loop's thread: a line one began is not continued by another's.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        a = pool.submit(requests.get, server.url("/asgi/a"), timeout=10)
        wait_for(lambda: requests.get(server.url("/asgi/b"), timeout=10).status_code == 200,
                 what="B's line, printed while A's waits for its end")
        assert a.result().status_code == 200
    log = server.error_log()
    b = re.search(r"sys.stdout: whole line of B, request_id: ([0-9a-f]{32})$", log, re.M)
    starts = re.search(r"sys.stdout: partial of A, request_id: ([0-9a-f]{32})$", log, re.M)
    ends = re.search(r"sys.stdout:  and its end, request_id: ([0-9a-f]{32})$", log, re.M)
    assert b and starts and ends, log[-2000:]
    assert starts.group(1) == ends.group(1) != b.group(1)


@pytest.mark.parametrize("how", ["close", "close-reuse"])
@pytest.mark.parametrize("where", ["/wsgi/", "/asgi/"])
def test_a_worker_whose_descriptors_the_app_closed_is_replaced(nginx_factory, where, how):
    """An app that closes the worker's descriptors (its epoll among them) leaves a worker that can
    serve nothing and would spin without a word: the worker says so and exits, and nginx's master
    starts one that serves. Also when the app's next files took the numbers that were nginx's."""
    app = APPS / "closes_descriptors.py"
    server = nginx_factory(location("/wsgi/", app) + asgi_location("/asgi/", f"{app}:asgi_app")).start()
    [worker] = server.worker_pids()
    assert requests.get(server.url(where), timeout=10).text == str(worker)
    with pytest.raises(requests.RequestException):
        requests.get(server.url(f"{where}?{how}"), timeout=10)

    def replaced():
        try:
            return requests.get(server.url(where), timeout=2).text not in ("", str(worker))
        except requests.RequestException:
            return False
    wait_for(replaced, timeout=30, what="a new worker's answer")
    log = server.error_log()
    assert re.search(rf"\[alert\] {worker}#\d+: wsgi: nginx's epoll \(descriptor \d+\) or the module's notifier "
                     r"eventfd \(\d+\) was closed under the worker, by the app \(os.closerange or a double "
                     r"close\?\); the worker exits and nginx starts another", log), log[-3000:]
    assert f"worker process {worker} exited with code 1" in log


def test_what_an_app_logs_for_a_request_goes_to_its_locations_error_log(nginx_factory):
    # As nginx's own entries about the request (and a proxied upstream's errors): an error_log
    # in the server or location. Before, they all went to the main log, filtered by its level:
    # with a quiet main log, a 500's traceback was logged nowhere.
    spec = APPS / "logs_of_a_request.py"
    server = start_with_standard_output_at_dev_null(nginx_factory(
        location("/w/", spec, "error_log logs/w.log info;")
        + asgi_location("/a/", f"{spec}:app", "error_log logs/a.log info;")
        + location("/main/", spec)))
    for path in ("/w/ok", "/w/boom", "/a/ok", "/a/boom", "/main/ok"):
        requests.get(server.url(path), timeout=10)
    logs = {name: lambda name=name: (server.prefix / "logs" / f"{name}.log").read_text() for name in ("w", "a")}
    wait_for(lambda: "RuntimeError: boom in asgi /a/boom" in logs["a"](), what="the ASGI traceback")
    main = server.error_log()
    for name, kind, lines in [("w", "wsgi", ["logged for", "printed for", "to wsgi.errors for"]),
                              ("a", "asgi", ["logged for", "printed for"])]:
        text = logs[name]()
        for path in (f"/{name}/ok", f"/{name}/boom"):
            for line in lines:
                wanted = f"{line} {kind} {path}" if line != "to wsgi.errors for" else f"{line} {path}"
                assert wanted in text, (wanted, text[-3000:])
                assert wanted not in main, (wanted, main[-3000:])
        assert f"RuntimeError: boom in {kind} /{name}/boom" in text and "Traceback" in text, text[-3000:]
        assert f"boom in {kind}" not in main, main[-3000:]
    # A location without an error_log of its own: the main one, as before.
    assert "logged for wsgi /main/ok" in main and "printed for wsgi /main/ok" in main

