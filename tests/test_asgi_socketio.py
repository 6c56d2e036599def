"""python-socketio under `asgi_app`, with its own client: Engine.IO's long-polling (requests
held open until the server has something), its WebSocket transport and the upgrade from the one
to the other, acknowledged events, a refused connection, and rooms across clients on different
transports in one worker."""
import signal
import socket
import threading

import pytest

from conftest import APPS, asgi_location, assert_unanswered, read_until, socketio_by_polling, wait_for

socketio = pytest.importorskip("socketio")

APP = APPS / "asgi_frameworks" / "socketio_app.py"
AUTH = {"token": "let-me-in"}


@pytest.fixture(scope="module")
def server(nginx_factory):
    return nginx_factory(asgi_location("/", f"{APP}:app")).start()


class Client:
    def __init__(self, server, transports):
        self.said = []
        self.welcome = threading.Event()
        self.heard = threading.Condition()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("welcome", lambda data: self.welcome.set())
        self.sio.on("said", self._said)
        self.sio.connect(server.url("/"), auth=AUTH, transports=transports, wait_timeout=10)

    def _said(self, data):
        with self.heard:
            self.said.append(data["text"])
            self.heard.notify_all()

    def close(self):
        self.sio.disconnect()

    def wait_said(self, count):
        with self.heard:
            assert self.heard.wait_for(lambda: len(self.said) >= count, timeout=10), self.said
        return self.said


@pytest.mark.parametrize("transports, expected", [
    (["polling"], "polling"),
    (["websocket"], "websocket"),
    (["polling", "websocket"], "websocket"),   # starts polling, upgrades
])
def test_each_transport_connects_and_acknowledges(server, transports, expected):
    c = Client(server, transports)
    try:
        assert c.welcome.wait(10)
        assert c.sio.transport() == expected
        for i in range(5):
            assert c.sio.call("echo", {"i": i, "text": "é" * i}, timeout=10) == {"echo": {"i": i, "text": "é" * i}}
    finally:
        c.close()


def test_a_refused_connection_fails_on_the_client(server):
    c = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        c.connect(server.url("/"), auth={"token": "wrong"}, transports=["websocket"], wait_timeout=10)


def test_a_room_spans_transports(server):
    polling, ws = Client(server, ["polling"]), Client(server, ["websocket"])
    try:
        for c in (polling, ws):
            assert c.sio.call("join", "lobby", timeout=10) == "lobby"
        # The polling client's held GET is answered by another connection's task.
        ws.sio.emit("say", {"room": "lobby", "text": "from ws"})
        assert polling.wait_said(1) == ["from ws"]
        polling.sio.emit("say", {"room": "lobby", "text": "from polling"})
        assert ws.wait_said(2) == ["from ws", "from polling"]
        assert polling.wait_said(2) == ["from ws", "from polling"]
    finally:
        polling.close()
        ws.close()


def test_a_reconnect_after_a_reload_reaches_the_new_worker(nginx_factory):
    # A browser's Socket.IO client, told to go by the old worker's close frame, reconnects by
    # long-polling a second later, on whichever connection it has: one left idle to the old
    # worker, which served it in its drain, opened the session there and exited with it; the
    # new worker then answered the client's next polls "Invalid session".
    server = nginx_factory(asgi_location("/", f"{APP}:app")).start()
    c = Client(server, ["websocket"])
    gone = threading.Event()
    c.sio.on("disconnect", lambda *_: gone.set())
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    kept.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b'"sid"' in read_until(kept, b"\r\n0\r\n\r\n")   # its whole answer (chunked)
    server.send_signal(signal.SIGHUP)
    assert gone.wait(20), "the old worker's close frame"
    # The reconnect's handshake, on the connection left idle: the old worker no longer answers.
    assert_unanswered(kept, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: t\r\n\r\n")
    kept.close()
    # On new connections, as the browser then goes on: the session the handshake opens is the
    # one its next requests find.
    packets = socketio_by_polling(server.port, AUTH)   # the connect's answer and the app's welcome, in either order
    assert any(p.startswith(b"40{") for p in packets), packets
    assert any(p.startswith(b'42["welcome"') for p in packets), packets
    log = server.error_log()
    assert "Invalid session" not in log and "Traceback" not in log, log[-3000:]
    wait_for(lambda: "exited with code 0" in server.error_log(), what="the old worker's exit")
    c.close()


def test_no_failure_in_the_log(server):
    log = server.error_log()
    assert "Traceback" not in log and "[alert]" not in log and "[crit]" not in log, log[-3000:]
