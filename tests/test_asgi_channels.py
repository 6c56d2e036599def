"""Django Channels under `asgi_app`: its consumers (async and sync), a group chat across
connections over the in-memory channel layer, refusals and close codes, a streaming HTTP
consumer and Django's views behind the same ProtocolTypeRouter, all in one nginx worker."""
import contextlib
import json

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import APPS, asgi_location, wait_for
from test_metrics import scrape

pytest.importorskip("channels")

APP = APPS / "asgi_frameworks" / "channels_app.py"


@pytest.fixture(scope="module")
def server(nginx_factory):
    s = nginx_factory(asgi_location("/", f"{APP}:application")
                      + "  location = /metrics { wsgi_status; }\n").start()
    s.ws = f"ws://127.0.0.1:{s.port}"
    return s


def test_an_async_consumer_echoes_text_and_bytes(server):
    with connect(f"{server.ws}/ws/echo?x=1", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        ws.send("héllo")
        assert ws.recv(timeout=10) == "héllo"
        ws.send(b"\x00\xff" * 5000)
        assert ws.recv(timeout=10) == b"\x00\xff" * 5000
        ws.send("scope")
        assert ws.recv(timeout=10) == repr([("path", "/ws/echo"), ("query_string", "b'x=1'"),
                                            ("scheme", "ws"), ("type", "websocket")])


def test_a_group_message_reaches_everyone_in_its_room_and_no_one_else(server):
    rooms = {"red": [], "blue": []}
    with contextlib.ExitStack() as stack:
        for room in ("red", "red", "red", "blue", "blue"):
            ws = stack.enter_context(connect(f"{server.ws}/ws/room/{room}"))
            assert json.loads(ws.recv(timeout=10)) == {"joined": room}
            rooms[room].append(ws)
        rooms["red"][0].send(json.dumps({"text": "to red"}))
        rooms["blue"][1].send(json.dumps({"text": "to blue"}))
        for room, members in rooms.items():
            for ws in members:
                assert json.loads(ws.recv(timeout=10)) == {"room": room, "text": f"to {room}"}
        # A member that left is dropped from its group: the others still get the next message.
        rooms["red"].pop().close()
        rooms["red"][1].send(json.dumps({"text": "again"}))
        for ws in rooms["red"]:
            assert json.loads(ws.recv(timeout=10)) == {"room": "red", "text": "again"}


def test_a_sync_consumer_runs_in_threads_and_keeps_its_state(server):
    with connect(f"{server.ws}/ws/counter") as a, connect(f"{server.ws}/ws/counter") as b:
        for i in range(1, 21):
            a.send(json.dumps({"i": i}))
            assert json.loads(a.recv(timeout=10)) == {"count": i, "echo": {"i": i}}
        b.send(json.dumps({"i": 0}))
        assert json.loads(b.recv(timeout=10)) == {"count": 1, "echo": {"i": 0}}


def test_a_consumer_that_closes_before_accepting_is_a_403_and_ends(server):
    for _ in range(3):
        with pytest.raises(InvalidStatus) as e:
            connect(f"{server.ws}/ws/refuses")
        assert e.value.response.status_code == 403
    # The consumer waits for websocket.disconnect after its close: it gets it, and its task
    # ends (rather than waiting until the worker exits).
    wait_for(lambda: scrape(server)["wsgi_asgi_tasks"] == 0, what="the refused consumers' tasks to end")


def test_a_consumers_close_code_reaches_the_client(server):
    with connect(f"{server.ws}/ws/closes") as ws:
        ws.send("anything")
        assert ws.recv(timeout=10) == "bye"
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
    assert e.value.rcvd.code == 4002


def test_http_through_the_same_router(server):
    r = requests.get(server.url("/lines"), timeout=10)
    assert (r.status_code, r.text) == (200, "line 0\nline 1\nline 2\n")
    assert r.headers["Content-Type"] == "text/plain"
    r = requests.get(server.url("/info?q=caf%C3%A9"), timeout=10)
    assert r.json() == {"path": "/info", "method": "GET", "q": "café"}
    assert requests.get(server.url("/ws/echo"), timeout=10).status_code == 404


def test_no_failure_in_the_log(server):
    log = server.error_log()
    assert "Traceback" not in log and "[alert]" not in log and "[crit]" not in log, log[-3000:]
