"""`wsgi_sticky_clients on`: every connection of one client address reaches the same worker (a
`listen ... reuseport` socket per worker, picked by the client's address), so that apps with
per-process sessions (Engine.IO's long-polling) work with several workers."""
import signal
import socket

import pytest

from conftest import APPS, asgi_location, location, read_until, wait_for

PID_APP = f"{APPS / 'worker_pid.py'}:application"
STICKY = dict(workers=2, listen_extra=" reuseport", http_extra="wsgi_sticky_clients on;")


def served_by(server, source):
    """The pid of the worker that answers a new connection from `source` (a loopback address)."""
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", server.port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    answer = read_until(s, b"\0")   # to the close
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    return int(body)


def workers_by_address(server, addresses, connections=5):
    return {a: {served_by(server, a) for _ in range(connections)} for a in addresses}


ADDRESSES = [f"127.0.0.{n}" for n in range(2, 26)]


def test_each_client_address_stays_on_one_worker_across_reloads(nginx_factory):
    server = nginx_factory(location("/", PID_APP), **STICKY).start()
    assert "wsgi_sticky_clients: each client address goes to one worker on 127.0.0.1:" in server.error_log()
    for generation in range(2):
        seen = workers_by_address(server, ADDRESSES)
        assert all(len(pids) == 1 for pids in seen.values()), seen
        assert {p for pids in seen.values() for p in pids} == set(server.worker_pids()), seen
        if generation == 0:
            old = set(server.worker_pids())
            server.send_signal(signal.SIGHUP)
            wait_for(lambda: len(set(server.worker_pids()) - old) == 2 and not old & set(server.worker_pids()),
                     what="the new workers alone")


def test_without_it_one_address_spreads_over_the_workers(nginx_factory):
    # The kernel's own choice hashes both ends' ports too: the control for the test above.
    server = nginx_factory(location("/", PID_APP), workers=2, listen_extra=" reuseport").start()
    assert len({served_by(server, "127.0.0.2") for _ in range(40)}) == 2


def test_socketio_polling_clients_connect_with_two_workers(nginx_factory):
    socketio = pytest.importorskip("socketio")
    app = APPS / "asgi_frameworks" / "socketio_app.py"
    server = nginx_factory(asgi_location("/", f"{app}:app"), **STICKY).start()
    for _ in range(6):
        c = socketio.Client(reconnection=False)
        c.connect(server.url("/"), auth={"token": "let-me-in"}, transports=["polling"], wait_timeout=10)
        assert c.call("echo", {"n": 1}, timeout=10) == {"echo": {"n": 1}}
        c.disconnect()
    assert "Invalid session" not in server.error_log()


def test_without_a_reuseport_listen_the_check_fails(nginx_factory):
    result = nginx_factory(location("/", PID_APP), workers=2, http_extra="wsgi_sticky_clients on;").run("-t")
    assert result.returncode != 0
    assert "wsgi_sticky_clients is on, but no `listen` has `reuseport`" in result.stderr
    assert nginx_factory(location("/", PID_APP), **STICKY).run("-t").returncode == 0
