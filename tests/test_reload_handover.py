"""wsgi_reload_handover: a reload's old workers go on accepting until its new ones are ready; a
new one that could not load its apps leaves new connections to them meanwhile. (The hand-over's
pause-free reloads are in test_lifecycle.py.)"""
import os
import signal
import threading
import time

import requests

from conftest import location, wait_for


def lock_holding_app(directory):
    """An app that takes a lock at its import and holds it while its process lives, as ZODB's
    FileStorage does (its Data.fs.lock): a new worker cannot import it while an old one runs.
    The check leaves the lock to the workers. /slow answers in 3 s (or as many as its query
    string says), having made `slow.started`."""
    directory.chmod(0o777)
    app = directory / "holds_a_lock.py"
    app.write_text(
        "import fcntl, os, time\n"
        "if os.environ.get('NGX_WSGI_CONFIG_CHECK') != '1':\n"
        "    _lock = open(os.path.join(os.path.dirname(__file__), 'app.lock'), 'a')\n"
        "    try:\n"
        "        fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    except BlockingIOError:\n"
        "        raise RuntimeError('app.lock is held by another process') from None\n"
        "def application(environ, start_response):\n"
        "    if environ['PATH_INFO'] == '/slow':\n"
        "        open(os.path.join(os.path.dirname(__file__), 'slow.started'), 'w').close()\n"
        "        time.sleep(float(environ['QUERY_STRING'] or 3))\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [str(os.getpid()).encode()]\n")
    return app


def answers_until_a_new_worker_serves(server, old):
    """(status, pid) of requests, one after the other, until one is served by a worker not in
    `old` (or for 60 s)."""
    answers = []
    deadline = time.monotonic() + 60
    while True:
        r = requests.get(server.url("/"), timeout=30)
        answers.append((r.status_code, int(r.text) if r.text.isdigit() else None))
        if r.status_code == 200 and answers[-1][1] not in old or time.monotonic() > deadline:
            return answers


def reload_during_a_slow_request(server, tmp_path, seconds):
    """Reloads while the old worker serves /slow for `seconds`; returns the old workers' pids
    and a function that waits for that request's answer."""
    old = server.worker_pids()
    slow = []
    in_flight = threading.Thread(target=lambda: slow.append(
        requests.get(server.url(f"/slow?{seconds}"), timeout=30)))
    in_flight.start()
    wait_for((tmp_path / "slow.started").exists, what="the slow request in the old worker")
    server.send_signal(signal.SIGHUP)

    def answered():
        in_flight.join()
        return slow[0]
    return old, answered


def test_a_new_worker_that_cannot_load_while_the_old_one_holds_a_lock_loads_as_soon_as_it_exits(
        nginx_factory, tmp_path):
    # Without the hand-over: the old worker, still serving a request, holds the lock the new
    # one's import needs. The new one answered 500 for 10 s, until its retry; it leaves new
    # connections waiting while the old one runs, and replaces itself as soon as it exits.
    app = lock_holding_app(tmp_path)
    server = nginx_factory(location("/", app)).start()
    assert int(requests.get(server.url("/"), timeout=10).text) in server.worker_pids()
    old, slow = reload_during_a_slow_request(server, tmp_path, 3)
    wait_for(lambda: "app.lock is held by another process" in server.error_log(),
             what="the new worker's failed import")
    answers = answers_until_a_new_worker_serves(server, old)
    assert slow().status_code == 200 and int(slow().text) in old, "the old worker finished its request"
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200]
    assert "could not load its apps: it leaves the new connections of the listening sockets it shares waiting" \
        in server.error_log()
    assert "the reload's old workers have exited" in server.error_log()


def test_new_connections_wait_for_an_old_worker_that_holds_a_lock_for_8_s_at_most(nginx_factory, tmp_path):
    # The old worker's last request lasts 11 s: past 8 s after the reload, the new worker answers
    # 500 rather than holding new connections (every location's) for as long, and a worker
    # replaces itself once the old one has exited.
    app = lock_holding_app(tmp_path)
    server = nginx_factory(location("/", app)).start()
    old, slow = reload_during_a_slow_request(server, tmp_path, 11)
    wait_for(lambda: "no longer accept but still run" in server.error_log(), 20,
             "the new worker taking connections again")
    assert requests.get(server.url("/"), timeout=10).status_code == 500, "the app is not loaded yet"
    assert slow().status_code == 200 and int(slow().text) in old
    answers = answers_until_a_new_worker_serves(server, old)
    assert answers[-1][0] == 200 and answers[-1][1] not in old, answers[-5:]
    assert "the reload's old workers have exited" in server.error_log()


def test_a_new_worker_with_its_own_reuseport_socket_answers_500_and_loads_once_the_old_one_exits(
        nginx_factory, tmp_path):
    # Its own socket has no one else to take its connections: it answers 500 while the old
    # worker runs (as before), and replaces itself as soon as that one has exited, not 10 s on.
    app = lock_holding_app(tmp_path)
    server = nginx_factory(location("/", app), listen_extra=" reuseport").start()
    old, slow = reload_during_a_slow_request(server, tmp_path, 2)
    wait_for(lambda: "it answers 500 for them while the reload's old workers run" in server.error_log(),
             what="the new worker that could not load the app")
    assert slow().status_code == 200
    wait_for(lambda: "the reload's old workers have exited" in server.error_log(), what="the old worker's exit seen")
    answers = answers_until_a_new_worker_serves(server, old)
    assert answers[-1][0] == 200 and answers[-1][1] not in old, answers[-5:]
    assert "replaces itself to try again as soon as the reload's old workers, which may hold what it needs, have exited" in server.error_log()
    assert "could not load an app at its start, and the reload's old workers have exited; recycling it" \
        in server.error_log()


def test_the_old_worker_quits_as_soon_as_the_reloads_only_new_worker_fails_to_load(nginx_factory, tmp_path):
    # With the hand-over, the old workers go on accepting while a reload's new ones import. A
    # new one whose import fails on a lock the old one holds (ZODB's: the check passes, the app
    # leaving the lock to the workers) stood aside while the old one served until its bound
    # (35 s here), holding the lock: its import failed again at each 10 s retry, and the reload
    # took effect at the bound. Now a failed start counts as the end of that worker's start: the
    # old one quits at once, and the new one loads the app as soon as it has exited.
    app = lock_holding_app(tmp_path)
    server = nginx_factory(location("/", app), http_extra="wsgi_reload_handover on; wsgi_check_timeout 30s;").start()
    old = server.worker_pids()
    assert int(requests.get(server.url("/"), timeout=10).text) in old, "the first worker has imported the app"
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "app.lock is held by another process" in server.error_log(), what="the new worker's failed import")
    answers = answers_until_a_new_worker_serves(server, old)
    log = server.error_log()
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200]
    assert "the reload's old workers have exited" in log
    assert "are still not ready after" not in log, "the old worker waited for its bound"
    assert log.count("cannot be loaded") == 1, "one failed import, no retry meanwhile"


def one_slow_one_failing_app(directory):
    """An app whose imports, once `counting` is beside it, are numbered: the first waits until a
    file `go` is beside it, the second fails, the others load at once. A worker that loaded it
    leaves `loaded.PID`."""
    directory.chmod(0o777)
    app = directory / "numbered.py"
    app.write_text(
        "import os, time\n"
        "here = os.path.dirname(__file__)\n"
        "if os.environ.get('NGX_WSGI_CONFIG_CHECK') != '1' and os.path.exists(os.path.join(here, 'counting')):\n"
        "    n = 1\n"
        "    while True:\n"
        "        try:\n"
        "            os.close(os.open(os.path.join(here, f'import.{n}'), os.O_CREAT | os.O_EXCL)); break\n"
        "        except FileExistsError:\n"
        "            n += 1\n"
        "    while n == 1 and not os.path.exists(os.path.join(here, 'go')):\n"
        "        time.sleep(0.05)\n"
        "    if n == 2:\n"
        "        raise RuntimeError('import 2 fails')\n"
        "if os.environ.get('NGX_WSGI_CONFIG_CHECK') != '1':\n"
        "    open(os.path.join(here, f'loaded.{os.getpid()}'), 'w').close()\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [str(os.getpid()).encode()]\n")
    return app


def loaded_by(tmp_path):
    return {int(p.name.split(".")[1]) for p in tmp_path.glob("loaded.*")}


def reload_with_one_new_worker_failing_while_another_imports(server, tmp_path):
    """Reloads two workers, the first new one importing until `go`, the second failing; returns
    the old workers' pids once the failed one stands aside."""
    old = server.worker_pids()
    wait_for(lambda: loaded_by(tmp_path) >= set(old), what="the first workers' imports")
    (tmp_path / "counting").touch()
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "could not load its apps: it leaves new connections to the reload's old workers"
             in server.error_log(), what="the new worker that failed standing aside")
    return old


def test_a_new_worker_that_failed_leaves_connections_to_the_old_ones_while_another_imports(nginx_factory, tmp_path):
    # Two new workers: one imports for long, the other fails. The old workers serve the app
    # meanwhile (they wait for the reload's new workers to have started), and the failed one
    # leaves new connections to them instead of answering 500 for its share. It does not try
    # again every 10 s meanwhile (a fresh worker would fail again on what the old ones hold,
    # logging the same traceback): it replaces itself once they have exited.
    app = one_slow_one_failing_app(tmp_path)
    server = nginx_factory(location("/", app), workers=2,
                           http_extra="wsgi_reload_handover on; wsgi_check_timeout 30s;").start()
    old = reload_with_one_new_worker_failing_while_another_imports(server, tmp_path)
    wait_for(lambda: "goes on accepting until they are ready" in server.error_log(), what="the old workers' wait")
    answers = []
    past_a_retry = time.monotonic() + 11
    while time.monotonic() < past_a_retry:
        r = requests.get(server.url("/"), timeout=10)
        answers.append((r.status_code, int(r.text) if r.text.isdigit() else None))
        time.sleep(0.1)
    assert all(status == 200 and pid in old for status, pid in answers), [a for a in answers if a[1] not in old]
    assert server.error_log().count("cannot be loaded") == 1, "no retry while the old workers serve"
    assert not (tmp_path / "import.3").exists()
    (tmp_path / "go").touch()
    wait_for(lambda: "1 of them without their apps" in server.error_log(), what="the old workers' quit")
    wait_for(lambda: "the reload's old workers have exited" in server.error_log(), what="the failed worker's retry")
    wait_for(lambda: len(loaded_by(tmp_path) - set(old)) == 2, what="both new workers serving the app")
    assert (tmp_path / "import.3").exists() and not (tmp_path / "import.4").exists()
    assert all(requests.get(server.url("/"), timeout=10).status_code == 200 for _ in range(20))


def test_a_new_worker_standing_aside_takes_connections_once_the_old_ones_are_gone_however_they_went(
        nginx_factory, tmp_path):
    # The old workers say they accept at each of their looks, so their going is noticed however
    # it happens: here a kill, long before their bound (35 s), while another new worker still
    # imports. The failed one replaces itself at once, and its fresh one loads the app.
    app = one_slow_one_failing_app(tmp_path)
    server = nginx_factory(location("/", app), workers=2,
                           http_extra="wsgi_reload_handover on; wsgi_check_timeout 30s;").start()
    old = reload_with_one_new_worker_failing_while_another_imports(server, tmp_path)
    wait_for(lambda: "goes on accepting until they are ready" in server.error_log(), what="the old workers' wait")
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "the reload's old workers have exited" in server.error_log(), 10, "the new worker's retry")
    wait_for(lambda: requests.get(server.url("/"), timeout=10).status_code == 200, 30,
             "a fresh worker that loads the app")
    assert not (tmp_path / "go").exists() and (tmp_path / "import.3").exists(), "loaded by the fresh worker"
    (tmp_path / "go").touch()
