"""wsgi_reload_handover: a reload's old workers go on accepting until its new ones are ready; a
new one that could not load its apps leaves new connections to them meanwhile. (The hand-over's
pause-free reloads are in test_lifecycle.py.)"""
import os
import signal

import requests

from conftest import location, wait_for


def locked_app(directory):
    """An app whose workers cannot import it while the file `held` is beside it (a lock another
    process holds), which the check, leaving the lock to the workers, imports all the same."""
    directory.chmod(0o777)
    app = directory / "locked.py"
    app.write_text(
        "import os\n"
        "if os.environ.get('NGX_WSGI_CONFIG_CHECK') != '1' and os.path.exists(os.path.join(os.path.dirname(__file__), 'held')):\n"
        "    raise RuntimeError('the lock is held by another process')\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [str(os.getpid()).encode()]\n")
    return app


def test_a_reloads_new_worker_that_cannot_load_its_app_leaves_connections_to_the_old_ones(nginx_factory, tmp_path):
    # With the hand-over, the old workers go on accepting while a reload's new ones import. A
    # new one whose import fails (a lock the old ones hold, as ZODB's: the check passes, the app
    # leaving the lock to the workers) answered 500 for its share of the connections; it stands
    # aside until the old ones stop accepting, and is replaced as any such worker.
    app = locked_app(tmp_path)
    server = nginx_factory(location("/", app), http_extra="wsgi_reload_handover on; wsgi_check_timeout 1s;").start()
    old = server.worker_pids()
    assert int(requests.get(server.url("/"), timeout=10).text) in old, "the first worker has imported the app"
    (tmp_path / "held").touch()
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "could not load its apps: it leaves new connections" in server.error_log(),
             what="the new worker standing aside")
    wait_for(lambda: "goes on accepting until they are ready" in server.error_log(), what="the old worker's wait")
    answers = [requests.get(server.url("/"), timeout=10) for _ in range(30)]
    assert [(r.status_code, r.text.isdigit() and int(r.text) in old) for r in answers] == [(200, True)] * 30
    # At the old worker's bound (6 s: wsgi_check_timeout, and 5 s) it quits, and the new one,
    # which has no one to leave connections to, takes them; the fresh worker that replaces it
    # (10 s after its start) loads the app once the lock is free.
    wait_for(lambda: not set(old) & set(server.worker_pids()), 30, "the old worker's exit at its bound")
    wait_for(lambda: "worker takes new connections again" in server.error_log(), what="the new worker back")
    (tmp_path / "held").unlink()
    wait_for(lambda: requests.get(server.url("/"), timeout=10).status_code == 200, 30,
             "a fresh worker that loads the app")


def test_a_new_worker_standing_aside_takes_connections_once_the_old_ones_are_gone_however_they_went(
        nginx_factory, tmp_path):
    # The old workers say they accept at each of their looks, so their going is noticed however
    # it happens: here a kill, long before their bound (35 s).
    app = locked_app(tmp_path)
    server = nginx_factory(location("/", app), http_extra="wsgi_reload_handover on; wsgi_check_timeout 30s;").start()
    old = server.worker_pids()
    assert int(requests.get(server.url("/"), timeout=10).text) in old
    (tmp_path / "held").touch()
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "goes on accepting until they are ready" in server.error_log(), what="the old worker's wait")
    wait_for(lambda: "could not load its apps: it leaves new connections" in server.error_log(),
             what="the new worker standing aside")
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "worker takes new connections again" in server.error_log(), 10, "the new worker back")
    (tmp_path / "held").unlink()
    wait_for(lambda: requests.get(server.url("/"), timeout=10).status_code == 200, 30,
             "a fresh worker that loads the app")
