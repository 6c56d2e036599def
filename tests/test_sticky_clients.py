"""`wsgi_sticky_clients on`: every connection of one client address reaches the same worker (a
`listen ... reuseport` socket per worker, picked by the client's address), so that apps with
per-process sessions (Engine.IO's long-polling) work with several workers."""
import signal
import socket

import pytest

from conftest import APPS, asgi_location, location, read_until, socketio_by_polling, wait_for

PID_APP = f"{APPS / 'worker_pid.py'}:application"
STICKY = dict(workers=2, listen_extra=" reuseport", http_extra="wsgi_sticky_clients on;")
ADDRESSES = [f"127.0.0.{n}" for n in range(2, 26)]


def served_by(server, source, path="/"):
    """The pid of the worker that answers a new connection from `source` (a loopback address)."""
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", server.port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    answer = read_until(s, b"\0")   # to the close
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    return int(body)


def addresses_by_worker(server, connections=5):
    """Which addresses each worker served, each address's connections all on one worker."""
    seen = {a: {served_by(server, a) for _ in range(connections)} for a in ADDRESSES}
    assert all(len(pids) == 1 for pids in seen.values()), seen
    by_worker = {}
    for address, (pid,) in seen.items():
        by_worker.setdefault(pid, set()).add(address)
    assert set(by_worker) == set(server.worker_pids()), seen
    return {frozenset(addresses) for addresses in by_worker.values()}


def reload(server):
    old = set(server.worker_pids())
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: len(set(server.worker_pids())) == 2 and not old & set(server.worker_pids()),
             what="the new workers alone")


def test_each_client_address_stays_on_one_worker_across_reloads(nginx_factory):
    server = nginx_factory(location("/", PID_APP), **STICKY).start()
    assert "wsgi_sticky_clients: each client address goes to one worker on 127.0.0.1:" in server.error_log()
    before = addresses_by_worker(server)
    reload(server)
    # The reload keeps the sockets: the same addresses share a worker.
    assert addresses_by_worker(server) == before
    # Turned off by a reload, the kernel's own choice comes back.
    server.conf.write_text(server.conf.read_text().replace("wsgi_sticky_clients on;", ""))
    reload(server)
    assert "wsgi_sticky_clients is off: the kernel picks each connection's worker again" in server.error_log()
    assert len({served_by(server, "127.0.0.2") for _ in range(40)}) == 2


def test_without_it_one_address_spreads_over_the_workers(nginx_factory):
    # The kernel's own choice hashes both ends' ports too: the control for the test above.
    server = nginx_factory(location("/", PID_APP), workers=2, listen_extra=" reuseport").start()
    assert len({served_by(server, "127.0.0.2") for _ in range(40)}) == 2


def test_socketio_polling_sessions_work_on_both_workers(nginx_factory):
    pytest.importorskip("socketio")
    app = APPS / "asgi_frameworks" / "socketio_app.py"
    server = nginx_factory(asgi_location("/", f"{app}:app") + location("= /pid", PID_APP), **STICKY).start()
    workers = set()
    for source in ADDRESSES[:10]:
        workers.add(served_by(server, source, "/pid"))
        packets = socketio_by_polling(server.port, {"token": "let-me-in"}, source)
        assert any(p.startswith(b"40{") for p in packets), packets
    assert workers == set(server.worker_pids())
    assert "Invalid session" not in server.error_log()


def test_without_a_reuseport_listen_the_check_fails(nginx_factory):
    result = nginx_factory(location("/", PID_APP), workers=2, http_extra="wsgi_sticky_clients on;").run("-t")
    assert result.returncode != 0
    assert "wsgi_sticky_clients is on, but no `listen` has `reuseport`" in result.stderr
    assert nginx_factory(location("/", PID_APP), **STICKY).run("-t").returncode == 0
