"""What production apps do besides answering requests: child processes, threads of their own,
signal handlers, long-lived streams, and more requests than threads."""
import concurrent.futures
import json
import os
import re
import signal
import socket
import threading
import time

import pytest
import requests

from conftest import APPS, asgi_location, location, recv_until, route, wait_for

APP = APPS / "real_apps.py"
KINDS = ["run", "shell", "check_call", "popen_wait", "communicate", "system", "fork", "mp_fork", "mp_spawn"]


@pytest.fixture(scope="module")
def real_app(wsgi_factory):
    return wsgi_factory([route("/", APP)], apache={"threads": 32}).start()


@pytest.mark.parametrize("kind", KINDS)
def test_a_child_reports_its_own_exit_status(real_app, kind):
    for code in (0, 3, 1):
        r = requests.get(real_app.url(f"/child/{kind}?{code}"), timeout=60)
        assert r.status_code == 200 and r.text == str(code), (kind, code, r.text)


def test_an_apps_children_do_not_interrupt_the_servers_event_loop(real_app):
    # A child's SIGCHLD (ignored) is dropped as it is sent, where the thread that started it
    # leaves it unblocked: blocked there, it went to nginx's event loop, whose epoll_wait logged
    # "epoll_wait() failed (4: Interrupted system call)" at info, once per child.
    before = real_app.error_log().count("Interrupted system call")
    for kind in ("run", "popen_wait", "mp_fork"):
        assert requests.get(real_app.url(f"/child/{kind}?0"), timeout=60).text == "0"
    assert real_app.error_log().count("Interrupted system call") == before


@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_a_multiprocessing_child_that_returns_waits_for_its_threads_and_says_0(real_app, kind):
    # Forked from a server thread, the child's main thread is the one Python knew as that
    # server thread: its exit must still be Python's own (threads joined, status 0).
    assert requests.get(real_app.url(f"/child_after_thread/{kind}"), timeout=60).text == "0 done"


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_pool_of_spawned_children_finds_an_app_file_whose_name_has_a_hyphen(wsgi_factory, method):
    # The children import the app's module by its name to unpickle `square`: imported as
    # `pool_of_children`, a name no file has, each child died and the pool made new ones for
    # ever (gunicorn's `pool-of-children:application` keeps the file's name).
    server = wsgi_factory([route("/", APPS / "pool-of-children.py")]).start()
    r = requests.get(server.url(f"/?{method}"), timeout=60)
    assert (r.status_code, r.text) == (200, "pool-of-children 49"), server.error_log()[-3000:]
    assert "ModuleNotFoundError" not in server.error_log()
    # Its former name (`-` was `_`) still imports it, for the app's code that used it.
    r = requests.get(server.url("/?former"), timeout=60)
    assert r.text == "pool-of-children True", server.error_log()[-3000:]


def test_a_mod_wsgi_script_not_named_py_is_served_without_replacing_the_module_of_its_stem(wsgi_factory):
    # mod_wsgi's `WSGIScriptAlias / /srv/site/site.wsgi`: its configuration check refused
    # the path (only PATH.py or a module name); named `site`, it would have taken the place of
    # Python's own `site` module in sys.modules.
    server = wsgi_factory([route("/", APPS / "site.wsgi")]).start()
    r = requests.get(server.url("/"), timeout=30)
    assert (r.status_code, r.text) == (200, "site_wsgi True"), server.error_log()[-3000:]
    # No bytecode cache: Python names it after the stem, the file a site.py beside it has.
    assert not list((APPS / "__pycache__").glob("site.*.pyc"))


@pytest.mark.parametrize("kind", ["run", "popen_wait", "fork", "mp_fork"])
def test_a_child_killed_by_a_signal_reports_the_signal(real_app, kind):
    r = requests.get(real_app.url(f"/child/{kind}?-{int(signal.SIGTERM)}"), timeout=60)
    assert r.text == str(-int(signal.SIGTERM)), (kind, r.text)


@pytest.mark.parametrize("kind", ["run", "system"])
def test_a_child_killed_by_sigsys_reports_it(real_app, kind):
    # nginx ignores SIGSYS, and an ignored signal crosses exec: the app's programs take it as
    # under plain Python.
    r = requests.get(real_app.url(f"/child/{kind}?-{int(signal.SIGSYS)}"), timeout=60)
    assert r.text == str(-int(signal.SIGSYS)), (kind, r.text)


def test_a_program_started_without_fork_holds_none_of_the_servers_descriptors(real_app):
    # os.system, os.posix_spawn and a C library's system() run no fork handler: the server's
    # listening sockets, connections and event descriptors are closed on exec instead (else a
    # restarted server cannot bind its port, and a client waits for the program to end).
    # Its request has a body over client_body_buffer_size, which nginx keeps in a temp file
    # (unlinked: a program that kept it would keep its disk space for as long as it runs).
    pid = int(requests.post(real_app.url("/system_background"), data=b"x" * (64 << 10), timeout=30).text)
    try:
        # The background job is a copy of the shell until its exec of sleep, which closes them.
        wait_for(lambda: os.readlink(f"/proc/{pid}/exe").endswith("/sleep"), what="the job's exec")
        held = links(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert not [h for h in held if h.startswith(("socket:", "anon_inode:")) or "client_body_temp" in h], held


def test_a_program_started_without_fork_holds_no_channel_to_another_worker(nginx_factory):
    # The master passes each worker the channels of the workers started after it, once the
    # worker runs: they are closed on exec too, as every socket and event descriptor of the
    # workers is.
    server = nginx_factory(location("/", APP), workers=2).start()
    wait_for(lambda: len(server.worker_pids()) == 2, what="both workers")
    assert requests.get(server.url("/pid"), timeout=10).status_code == 200
    inherited = []
    for worker in server.worker_pids():
        for fd in os.listdir(f"/proc/{worker}/fd"):
            try:
                link = os.readlink(f"/proc/{worker}/fd/{fd}")
                with open(f"/proc/{worker}/fdinfo/{fd}") as f:
                    flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
            except OSError:
                continue
            if link.startswith(("socket:", "anon_inode:")) and not flags & os.O_CLOEXEC:
                inherited.append((worker, fd, link))
    assert not inherited, inherited


def links(pid):
    """What the descriptors of process `pid` name (one closed meanwhile is left out)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_a_program_started_without_fork_holds_no_upload_being_received(real_app):
    # Another client's upload, over client_body_buffer_size, is in nginx's temp file while it
    # arrives (before any app has it): a program started meanwhile does not keep that file.
    with socket.create_connection(("127.0.0.1", real_app.port), timeout=30) as upload:
        upload.sendall(b"POST /pid HTTP/1.1\r\nHost: t\r\nContent-Length: 400000\r\n\r\n" + b"u" * 200_000)
        if real_app.kind == "nginx":
            def spooled():
                return any("client_body_temp" in link for w in real_app.worker_pids() for link in links(w))
            wait_for(spooled, what="nginx to spool the upload (an unlinked temp file)")
        pid = int(requests.get(real_app.url("/system_background"), timeout=30).text)
        try:
            wait_for(lambda: os.readlink(f"/proc/{pid}/exe").endswith("/sleep"), what="the job's exec")
            held = links(pid)
        finally:
            os.kill(pid, signal.SIGKILL)
        upload.sendall(b"u" * 200_000)
        assert recv_until(upload, b"\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    assert not [h for h in held if "client_body_temp" in h], held


def test_a_program_started_without_fork_has_no_signal_blocked(real_app):
    # The server's threads block signals, and a mask crosses exec: os.system and os.posix_spawn
    # give the program an empty one (a `timeout` or a `kill` could not stop it otherwise).
    empty = "0" * 16
    assert requests.get(real_app.url("/spawn_masks"), timeout=30).text == f"{empty} {empty}"


def test_os_system_gives_its_shell_the_process_environment_and_its_status(real_app):
    assert requests.get(real_app.url("/system_env"), timeout=30).text == "seen 3"


def test_a_child_terminated_as_soon_as_it_starts_ends_with_sigterm(real_app):
    # The signal waits, blocked across the fork whatever the thread's mask, until the child's
    # fork handler has put the default handlers back: it is not taken by the server's handler
    # and lost.
    codes = requests.get(real_app.url("/terminate_at_once"), timeout=120).json()
    assert codes == [-int(signal.SIGTERM)] * 10, codes


def test_signals_an_app_unblocked_in_a_pool_thread_are_blocked_again_after_its_request(wsgi_factory):
    # A process's signal taken by a pool thread would run the server's handler without waking
    # the thread that acts on it (nginx's event loop, Apache's listener): the thread's mask is
    # put back before its next request.
    server = wsgi_factory([route("/", APP)], nginx={"http_extra": "wsgi_max_threads 1;"},
                          apache={"threads": 1}).start()
    first, before = requests.get(server.url("/thread_sigblk"), timeout=10).text.split()
    thread = requests.get(server.url("/unblock_sigterm"), timeout=10).text
    same, blocked = requests.get(server.url("/thread_sigblk"), timeout=10).text.split()
    assert first == thread == same, "one thread serves all three"
    assert blocked == before, (before, blocked)
    if server.kind == "nginx":
        mask = int(blocked, 16)
        assert mask & (1 << (signal.SIGTERM - 1)) and mask & (1 << (signal.SIGINT - 1)), blocked


def test_a_request_queued_behind_one_that_unblocked_signals_runs_with_them_blocked(nginx_factory, tmp_path):
    # The one thread takes the queued request right after the first, in the same drain: the
    # mask was put back once the drain ended, so the second ran with the first's mask.
    server = nginx_factory(location("/", APP) + "  location = /status { wsgi_status; }\n",
                           http_extra="wsgi_max_threads 1;").start()
    release = tmp_path / "release"
    answers = {}

    def get(name, path):
        answers[name] = requests.get(server.url(path), timeout=30).text

    first = threading.Thread(target=get, args=("first", f"/unblock_sigterm?{release}"))
    first.start()
    wait_for(lambda: "wsgi_pool_threads_busy 1" in requests.get(server.url("/status"), timeout=10).text,
             what="the first request on the thread")
    queued = threading.Thread(target=get, args=("queued", "/thread_sigblk"))
    queued.start()
    wait_for(lambda: "wsgi_requests_queued 1" in requests.get(server.url("/status"), timeout=10).text,
             what="the second request queued")
    release.touch()
    first.join()
    queued.join()
    thread, blocked = answers["queued"].split()
    assert thread == answers["first"], "one thread serves both"
    mask = int(blocked, 16)
    assert mask & (1 << (signal.SIGTERM - 1)) and mask & (1 << (signal.SIGINT - 1)), blocked


def test_a_child_forked_while_another_thread_held_tempfile_s_lock_can_make_temporary_files(real_app):
    # A multiprocessing fork Manager started so hung at its start, for ever.
    assert requests.get(real_app.url("/fork_with_tempfile_lock_held"), timeout=30).text == "0"


def test_children_at_import_and_in_app_threads(real_app):
    assert requests.get(real_app.url("/import_child")).text == "7"
    assert requests.get(real_app.url("/thread_child")).text == "9"
    if real_app.kind == "nginx":
        # What the app's import-time children show in ps: a worker's, not nginx's master's.
        assert requests.get(real_app.url("/import_title")).text == "nginx: worker process"


@pytest.mark.parametrize("directive,started_with,umask", [
    # nginx's daemon mode leaves its workers a umask of 0: the apps' files would be writable by
    # every user (an nginx started with umask 0 is in the same state).
    ("", 0, 0o022),
    ("", 0o027, 0o027),
    ("wsgi_umask 077;", 0o022, 0o077),
    ("wsgi_umask off;", 0, 0),
])
def test_the_workers_umask(nginx_factory, directive, started_with, umask):
    server = nginx_factory(location("/", APP), http_extra=directive)
    mine = os.umask(started_with)
    try:
        server.start()
    finally:
        os.umask(mine)
    assert requests.get(server.url("/umask"), timeout=10).text == oct(umask)


@pytest.mark.parametrize("directive,started_with,daemon,umask", [
    ("", 0, False, 0o022),
    ("wsgi_umask 077;", 0o022, False, 0o077),
    ("wsgi_umask off;", 0, False, 0),
    # A first start's check runs before nginx daemonizes, which gives the workers a mask of 0.
    ("", 0o077, True, 0o022),
    ("wsgi_umask off;", 0o022, True, 0),
])
def test_what_the_check_imports_makes_gets_the_workers_umask(nginx_factory, tmp_path, directive, started_with,
                                                             daemon, umask):
    # A reload's check runs from the daemonized master, whose mask is 0: a directory the app
    # made at import there was writable by every user.
    tmp_path.chmod(0o777)
    server = nginx_factory(location("/", APP), http_extra=directive,
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};")
    if daemon:
        server.conf.write_text(server.conf.read_text().replace("daemon off;\n", ""))
    mine = os.umask(started_with)
    try:
        check = server.run("-t")
    finally:
        os.umask(mine)
    assert check.returncode == 0, check.stderr
    made = list(tmp_path.glob("made-at-import-*"))
    assert len(made) == 1
    assert made[0].stat().st_mode & 0o777 == 0o777 & ~umask


def test_an_app_can_tell_the_configuration_check_from_a_worker(nginx_factory, tmp_path):
    # The check imports the app in a process of its own: NGX_WSGI_CONFIG_CHECK=1 there, so that
    # an app can leave its schedulers for the workers; the workers do not see it.
    tmp_path.chmod(0o777)
    server = nginx_factory(location("/", APPS / "knows_the_check.py"),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};")
    assert server.run("-t").returncode == 0
    server.start()
    assert requests.get(server.url("/"), timeout=30).text == "worker None"
    assert (tmp_path / "imports").read_text().split() == ["check", "check", "worker"]


def test_a_hundred_concurrent_children_each_get_their_own_status(real_app):
    def one(i):
        kind = KINDS[i % 4]
        return requests.get(real_app.url(f"/child/{kind}?{i % 50}"), timeout=120).text, str(i % 50)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(100)))
    assert [got for got, _ in results] == [want for _, want in results]
    assert requests.get(real_app.url("/zombies")).text == "0"
    log = real_app.error_log()
    assert "unknown process" not in log, log[-2000:]
    assert "exited with code" not in log.replace("worker process", "")


FORKING = APPS / "forking.py"


@pytest.fixture(scope="module")
def forking(wsgi_factory):
    return wsgi_factory([route("/", FORKING)]).start()


@pytest.fixture(scope="module")
def forking_asgi(nginx_factory):
    return nginx_factory(asgi_location("/", f"{FORKING}:asgi_app")).start()


def test_a_process_the_app_forks_holds_none_of_the_servers_sockets(forking):
    # Else it keeps the port bound after the server stops, and (nginx) clients' connections
    # open after nginx has closed them.
    r = requests.get(forking.url("/?held"), timeout=30).json()
    assert r["child_exit"] == 0 and r["sockets_in_child"]["listening"] == 0
    if forking.kind == "nginx":
        assert r["sockets_in_child"]["connected"] == 0


def test_a_process_the_app_forks_holds_no_channel_to_another_worker(nginx_factory):
    # A worker keeps its ends of the other workers' channels (nginx's master passes them), which
    # are not connections: a forked child kept them.
    server = nginx_factory(location("/", FORKING), workers=2).start()
    wait_for(lambda: len(server.worker_pids()) == 2, what="both workers")
    for _ in range(4):  # both workers, most likely
        in_child = set(requests.get(server.url("/?links"), timeout=30).json()["sockets_in_child"])
        in_workers = {link for w in server.worker_pids() for link in links(w) if link.startswith("socket:")}
        assert not in_child & in_workers, (in_child, in_workers)


def test_a_process_an_asgi_app_forks_holds_none_of_nginxs_sockets(forking_asgi):
    r = requests.get(forking_asgi.url("/?held"), timeout=30).json()
    assert r == {"sockets_in_child": {"listening": 0, "connected": 0}, "child_exit": 0}


# How the child comes back, the status it exits with (Python's for an uncaught end: a negative
# one is the signal that ended it), and the line it leaves in the error log.
CHILD_ENDS = {
    "returns": (0, "returned from it into the server"),
    "raises": (1, "raised into the server:\nTraceback (most recent call last):"),
    "exits": (3, "called sys.exit(3) into the server"),
    "interrupted": (-signal.SIGINT, "raised into the server:\nTraceback (most recent call last):"),
    "prints": (0, "returned from it into the server"),
}


@pytest.mark.parametrize("way", CHILD_ENDS)
def test_a_forked_child_that_comes_back_into_the_server_exits(forking, way):
    comes_back_and_exits(forking, way, *CHILD_ENDS[way])


def test_a_forked_childs_flush_that_waits_for_a_lock_held_at_the_fork_ends(forking):
    # Its line is written first: the status it names is still the one the child exits with.
    comes_back_and_exits(forking, "stuck", 0, "returned from it into the server")
    assert re.search(r"process \d+, forked by the application: its sys.stdout or sys.stderr could not be flushed "
                     r"in 2 s \(a lock another thread held at the fork, or a full pipe\); what it buffered is lost",
                     forking.error_log())


@pytest.mark.parametrize("way", [*CHILD_ENDS, "sends"])
def test_a_forked_child_that_comes_back_into_the_asgi_event_loop_exits(forking_asgi, way):
    status, how = CHILD_ENDS.get(way, (0, "called the request's receive() or send()"))
    comes_back_and_exits(forking_asgi, way, status, how)


def test_a_forked_childs_entries_reach_a_syslog_error_log(nginx_factory):
    # nginx's syslog writer is its event loop's; a child the app forked has none to hand its
    # entries to, and writes them itself, with its own pid.
    import socket as _socket
    sink = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(20)
    server = nginx_factory(location("/", FORKING),
                           main_extra=f"error_log syslog:server=127.0.0.1:{sink.getsockname()[1]},tag=ngxwsgi info;")
    server.start()
    assert requests.get(server.url("/?logs"), timeout=30).json()["child_exit"] == 0
    received = []
    while not any("logged by the forked child" in m for m in received):
        received.append(sink.recv(65536).decode(errors="replace"))
    sink.close()
    entry = next(m for m in received if "logged by the forked child" in m)
    worker = server.worker_pids()[0]
    assert re.search(r" (\d+)#\1: python: forked: logged by the forked child", entry), entry
    assert f" {worker}#" not in entry, "the child's own pid"


def comes_back_and_exits(server, way, status, how):
    r = requests.get(server.url(f"/?{way}"), timeout=30).json()
    assert r["child_exit"] == status
    if way == "prints":
        assert r["printed"] == "printed by the child\n", "what Python buffered is written out"
    wait_for(lambda: re.search(rf"process \d+, forked by the application, {re.escape(how)}", server.error_log()),
             what="the child's line")
    ends = ("ends on SIGINT, as Python does after a KeyboardInterrupt" if status < 0
            else f"exits with status {status}")
    assert re.search(rf"{re.escape(how)}(.|\n)*? and {ends} \(a forked child should end with "
                     r"os._exit\(\)\)", server.error_log())
    assert requests.get(server.url("/?held"), timeout=30).status_code == 200, "the server serves on"


NON_DAEMON_THREAD_APP = APPS / "app_threads.py"


def test_a_thread_the_app_never_stops_cannot_hold_quit_or_reload(nginx_factory, tmp_path):
    server = nginx_factory(location("/", NON_DAEMON_THREAD_APP),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_shutdown_timeout 1s;").start()
    old = server.worker_pids()
    assert requests.get(server.url("/")).text == "threads started"
    server.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(old) & set(server.worker_pids()):
        time.sleep(0.05)
    assert not set(old) & set(server.worker_pids()), "the old worker exited: the reload completed"
    log = server.error_log()
    assert "wsgi: Python threads still running after wsgi_shutdown_timeout (1000 ms)" in log, log[-3000:]
    assert "metrics-pusher" in log and "in _push_forever" in log
    assert re.search(r"still running after wsgi_shutdown_timeout \(1000 ms\): [^\n]*'metrics-pusher'[^\n]*; the "
                     r"process exits without finalising Python, once the atexit handlers have run\nThread ", log), \
        "the sentence, then the stacks"
    assert f"imported-{old[0]}" in " ".join(p.name for p in tmp_path.iterdir())
    assert (tmp_path / f"atexit-{old[0]}").exists(), "atexit handlers still run"
    assert "exited on signal" not in log
    new = server.worker_pids()
    assert requests.get(server.url("/")).text == "threads started"
    started = time.monotonic()
    assert server.stop(timeout=30) == 0, "quit completes"
    assert time.monotonic() - started < 20
    assert (tmp_path / f"atexit-{new[0]}").exists()


@pytest.mark.parametrize("query, cut", [
    ("", "wsgi: Python threads still running after a fast stop that came during the exit (100 ms): "
         "'metrics-pusher'"),
    ("slow-atexit", "Python's finalisation (atexit handlers included) still running after 800 ms of a fast stop "
                    "that came meanwhile; the process exits now"),
])
def test_a_fast_stop_during_a_graceful_exits_waits_cuts_them_short(nginx_factory, tmp_path, query, cut):
    # Debian's and systemd's stop: QUIT, then TERM a few seconds later. The worker waited on
    # for the app's thread or its atexit handler (up to wsgi_shutdown_timeout), and nginx's
    # master killed it (signal 9: no stacks logged, the handlers cut where they were).
    server = nginx_factory(location("/", NON_DAEMON_THREAD_APP),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_shutdown_timeout 20s;").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url(f"/?{query}")).text == "threads started"
    server.send_signal(signal.SIGQUIT)
    if query == "slow-atexit":
        wait_for(lambda: (tmp_path / f"atexit-waiting-{worker}").exists(), what="the atexit handler's wait")
    else:
        wait_for(lambda: f"{worker}#{worker}: exiting" in server.error_log(), what="the exit")
        time.sleep(0.5)  # into the wait for the thread (which never ends)
    server.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    log = server.error_log()
    assert cut in log, log[-3000:]
    assert "exited on signal" not in log, log[-3000:]


def test_threads_that_end_in_time_are_joined_and_python_is_finalised(nginx_factory, tmp_path):
    server = nginx_factory(location("/", NON_DAEMON_THREAD_APP),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/?polite")).text == "threads started"
    assert server.stop(timeout=30) == 0
    log = server.error_log()
    assert "still running after wsgi_shutdown_timeout" not in log
    assert (tmp_path / f"polite-done-{worker}").exists(), "the thread ran to its end"
    assert (tmp_path / f"atexit-{worker}").exists()
    assert f"worker process {worker} exited with code 0" in log


def test_what_app_threads_log_while_the_worker_waits_at_exit_carries_its_own_time(nginx_factory, tmp_path):
    # The worker's event loop is blocked while it waits for the app's threads: an entry another
    # thread writes then has the time it was written, not the time nginx cached before the wait.
    server = nginx_factory(location("/", NON_DAEMON_THREAD_APP),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/?late-log")).text == "threads started"
    server.send_signal(signal.SIGQUIT)
    wait_for(lambda: f"{worker}#{worker}: gracefully shutting down" in server.error_log(), what="the exit")
    time.sleep(2.1)  # not a speed limit: the entry below must be written at least 2 s later
    (tmp_path / f"go-{worker}").write_text("go")
    wait_for(lambda: f"worker process {worker} exited with code 0" in server.error_log(), what="a clean exit")
    log = server.error_log()
    began = re.search(rf"^(\S+ \S+) \[notice\] {worker}#{worker}: gracefully shutting down$", log, re.M)
    late = re.search(r"^(\S+ \S+) \[warn\] .*python: late: the late thread logs while the worker waits for it",
                     log, re.M)
    assert began and late, log[-3000:]
    stamp = lambda text: time.mktime(time.strptime(text, "%Y/%m/%d %H:%M:%S"))
    assert stamp(late.group(1)) - stamp(began.group(1)) >= 2, (began.group(0), late.group(0))


def test_what_app_threads_log_while_the_worker_imports_carries_its_own_time(nginx_factory):
    # The worker's event loop is busy importing the apps: an entry another thread of the app
    # writes meanwhile has the time it was written, not the time nginx cached as the import began.
    server = nginx_factory(location("/", APPS / "slow_import.py"),
                           main_extra="env NGX_WSGI_TEST_IMPORT_TICKS=1;").start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/"), timeout=30).text == f"imported by {worker}"
    ticks = re.findall(rf"^(\S+ \S+) \[error\] {worker}#\d+: sys.stderr: importing, tick \d+$", server.error_log(),
                       re.M)
    assert len(ticks) >= 4, server.error_log()[-3000:]
    stamp = lambda text: time.mktime(time.strptime(text, "%Y/%m/%d %H:%M:%S"))
    assert stamp(ticks[-1]) - stamp(ticks[0]) >= 1, ticks  # not a speed limit: 0.5 s apart, 4 or more


SIGNAL_APP = APPS / "signal_grabber.py"


def _leave_early(port, path):
    """Asks for a long body, reads a little of it, then resets the connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert s.recv(4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def test_an_app_cannot_take_the_servers_signals(wsgi_factory):
    server = wsgi_factory([route("/", SIGNAL_APP)]).start()
    assert requests.get(server.url("/")).text == "ok"
    workers = server.worker_pids()
    log = server.error_log()
    for name in ("SIGTERM", "SIGHUP", "SIGPIPE"):
        assert f"an app set a handler for {name} while it was imported" in log, log[-3000:]
    if server.kind == "nginx":  # (Apache's child blocks them in that thread already)
        assert ("an app changed the blocking of SIGQUIT, SIGTERM in the server's thread while it was "
                "imported; the server puts its mask back") in log, log[-3000:]
    for _ in range(20):
        _leave_early(server.port, "/big")
    assert requests.get(server.url("/")).text == "ok"
    assert server.worker_pids() == workers, "writing to closed connections killed no process"
    assert "exited on signal" not in server.error_log()
    # Reload (nginx: SIGHUP; Apache: graceful restart, SIGUSR1) replaces the processes.
    server.send_signal(signal.SIGHUP if server.kind == "nginx" else signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(workers) & set(server.worker_pids()):
        time.sleep(0.05)
    assert not set(workers) & set(server.worker_pids()), "the reload completed"
    assert requests.get(server.url("/")).text == "ok"
    if server.kind == "nginx":
        # SIGQUIT to a worker alone (README: how an app replaces its own worker) ends it.
        [worker] = server.worker_pids()
        os.kill(worker, signal.SIGQUIT)
        wait_for(lambda: f"worker process {worker} exited with code 0" in server.error_log(),
                 what="the worker's exit")
        assert requests.get(server.url("/")).text == "ok"
    assert server.stop(timeout=30) == 0, "the stop completed"


OVERLOAD = (
    "  location = /metrics { wsgi_status; }\n"
    + location("/", APP)
    # The gate opener runs on nginx's own pool: it gets a thread when the module's are all busy.
    + location("/side/", APP, "wsgi_thread_pool side;")
)


def gauge(server, name):
    from prometheus_client.parser import text_string_to_metric_families
    text = requests.get(server.url("/metrics"), timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                return s.value
    raise KeyError(name)


def test_a_full_queue_answers_503_at_once_and_says_why_once(nginx_factory):
    server = nginx_factory(OVERLOAD, main_extra="thread_pool side threads=1;",
                           http_extra="wsgi_max_threads 2; wsgi_max_queue 2; wsgi_queue_timeout 60s;").start()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        held = [pool.submit(requests.get, server.url("/block?full"), timeout=60) for _ in range(2)]
        wait_for(lambda: gauge(server, "wsgi_pool_threads_busy") == 2, 30, "two threads busy")
        held += [pool.submit(requests.get, server.url("/block?full"), timeout=60) for _ in range(2)]
        wait_for(lambda: gauge(server, "wsgi_requests_queued") == 2, 30, "two requests queued")
        started = time.monotonic()
        refused = [requests.get(server.url(f"/extra{i}"), timeout=10) for i in range(20)]
        took = time.monotonic() - started
        assert {r.status_code for r in refused} == {503}
        assert {r.headers.get("Retry-After") for r in refused} == {"60"}
        assert gauge(server, "wsgi_requests_refused_total") == 20
        assert requests.get(server.url("/side/open?full"), timeout=10).text == "opened"
        assert [f.result().text for f in held] == ["unblocked"] * 4
    def counted():
        return [int(n) for n in re.findall(r"wsgi: (\d+) request\(s\) answered 503 since the last "
                                           r"such entry", server.error_log())]
    # The second after an entry ends with one for the refusals it saw: the burst's count is
    # whole with no later 503.
    wait_for(lambda: sum(counted()) >= 20, 10, "all 20 refusals logged")
    assert sum(counted()) == 20, counted()
    assert 1 <= len(counted()) <= 2 + int(took), "one entry per second at most, not one per request"
    assert "wsgi_max_queue requests already wait" in server.error_log()
    assert requests.get(server.url("/after")).text == "ok"


def test_a_request_that_waits_past_the_queue_timeout_gets_503(nginx_factory):
    server = nginx_factory(OVERLOAD, main_extra="thread_pool side threads=1;",
                           http_extra="wsgi_max_threads 1; wsgi_queue_timeout 300ms;").start()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = pool.submit(requests.get, server.url("/block?stale"), timeout=60)
        wait_for(lambda: gauge(server, "wsgi_pool_threads_busy") == 1, 30, "the one thread is busy")
        waited = requests.get(server.url("/waits"), timeout=30)
        assert waited.status_code == 503 and waited.headers["Retry-After"] == "1"
        assert gauge(server, "wsgi_requests_queued") == 0
        requests.get(server.url("/side/open?stale"), timeout=10)
        assert held.result().text == "unblocked"
    assert "waited longer than wsgi_queue_timeout" in server.error_log()
    assert requests.get(server.url("/after")).text == "ok"


def test_thread_and_queue_directives_are_checked(nginx_factory):
    for bad, message in [("wsgi_max_threads 0;", "wsgi_max_threads needs a whole number above 0, not \"0\""),
                         ("wsgi_max_queue none;", "wsgi_max_queue needs a whole number above 0"),
                         ("wsgi_queue_timeout soon;", "invalid value"),
                         ("wsgi_shutdown_timeout never;", "invalid value")]:
        result = nginx_factory(location("/", APP), http_extra=bad).run("-t")
        assert result.returncode != 0 and message in result.stderr, (bad, result.stderr)


def _open_stream(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    recv_until(s, b"data: 0")
    return s


def test_long_lived_streams_never_starve_short_requests(nginx_factory):
    """More concurrent event streams than any fixed pool had threads, then short requests:
    every stream starts and every short request is answered; when the clients leave, every
    stream is closed and its thread comes back."""
    server = nginx_factory(location("/", APP) + "  location = /metrics { wsgi_status; }\n",
                           main_extra="worker_rlimit_nofile 4096;",
                           ).start()
    streams = []
    try:
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            streams = list(pool.map(lambda i: _open_stream(server.port, f"/stream?s{i}"), range(300)))
        assert len(streams) == 300
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            short = list(pool.map(lambda i: requests.get(server.url(f"/short{i}"), timeout=20).text, range(40)))
        assert short == ["ok"] * 40
        assert gauge(server, "wsgi_pool_threads_busy") >= 300
    finally:
        for s in streams:
            s.close()
    wait_for(lambda: json.loads(requests.get(server.url("/stats"), timeout=10).text)["streams_closed"] >= 300, 30,
             "every stream was closed at its next line")
    wait_for(lambda: gauge(server, "wsgi_pool_threads_busy") == 0, 30, "every thread came back")
    assert "exited on signal" not in server.error_log()


def test_a_stuck_app_thread_cannot_hold_a_stop_on_either_server(wsgi_factory):
    import pathlib
    import tempfile
    # Apache's children run as nobody when the tests run as root: a directory they can write.
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-marks-"))
    tmp_path.chmod(0o777)
    marks = f"NGX_WSGI_TEST_MARKS={tmp_path}"
    server = wsgi_factory(
        [route("/", NON_DAEMON_THREAD_APP)],
        nginx={"main_extra": f"env {marks};", "http_extra": "wsgi_shutdown_timeout 1s;"},
        apache={"server_extra": "NgxWsgiShutdownTimeout 1s", "env": {"NGX_WSGI_TEST_MARKS": str(tmp_path)}},
    ).start()
    worker = server.worker_pids()[0]
    assert requests.get(server.url("/")).text == "threads started"
    started = time.monotonic()
    # Apache: its graceful stop. An ungraceful one (SIGTERM) runs the event MPM's
    # close_worker_sockets, which now and then reads a worker's slot whose connection pool was
    # already destroyed and segfaults the child (seen about once in 60 stops with any app; a
    # crash in the MPM's code, not in this module's exit, which is what this test is about).
    how = signal.SIGQUIT if server.kind == "nginx" else signal.SIGWINCH
    assert server.stop(sig=how, timeout=60) == 0, "the stop completed"
    assert time.monotonic() - started < 30
    log = server.error_log()
    timeout_name = "wsgi_shutdown_timeout" if server.kind == "nginx" else "NgxWsgiShutdownTimeout"
    assert f"Python threads still running after {timeout_name} (1000 ms)" in log, log[-3000:]
    assert "metrics-pusher" in log
    assert any(p.name.startswith("atexit-") for p in tmp_path.iterdir()), "atexit handlers ran"
    assert "exited on signal" not in log and "Segmentation" not in log


@pytest.mark.parametrize("how", ["atexit", "executor"])
def test_an_atexit_handler_that_never_returns_cannot_hold_a_stop(wsgi_factory, how):
    # After the app's threads, its atexit handlers (and Python's teardown) get the shutdown
    # timeout too; then the process ends. Before, the old worker stayed for ever.
    server = wsgi_factory(
        [route("/", APPS / "stuck_exit.py")],
        nginx={"http_extra": "wsgi_shutdown_timeout 1s;"},
        apache={"server_extra": "NgxWsgiShutdownTimeout 1s"},
    ).start()
    assert requests.get(server.url(f"/?{how}")).text == "registered"
    how_to_stop = signal.SIGQUIT if server.kind == "nginx" else signal.SIGWINCH
    assert server.stop(sig=how_to_stop, timeout=60) == 0, "the stop completed (not killed)"
    log = server.error_log()
    name = "wsgi_shutdown_timeout" if server.kind == "nginx" else "NgxWsgiShutdownTimeout"
    if how == "executor":
        # The executor's thread (started by a request: not a daemon thread) is stuck in its
        # job: named after the wait for threads, then its executor's shutdown(wait=True) in
        # the atexit handlers is bounded too.
        assert f"Python threads still running after {name} (1000 ms): 'ThreadPoolExecutor-" in log, log[-3000:]
        what = "the atexit handlers"
    else:
        what = "Python's finalisation (atexit handlers included)"
    assert f"{what} still running after {name} (1000 ms); the process exits now" in log, log[-3000:]
    assert "exited on signal" not in log and "Segmentation" not in log
