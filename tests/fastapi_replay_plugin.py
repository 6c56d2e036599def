"""pytest plugin for tests/test_fastapi_replay.py: runs FastAPI's own tutorial tests, whose
`TestClient(app)` calls the app in the test process, with a TestClient that sends the same
requests over HTTP to nginx serving the same app with `asgi_app`.

NGX_WSGI_REPLAY=record:FILE   runs the tests as they are and writes to FILE every app they build
                              a TestClient for (its module, attribute and root_path);
NGX_WSGI_REPLAY=replay:FILE   FILE maps those apps to the port of an nginx that serves each:
                              every TestClient request and WebSocket goes there instead.
"""
import json
import os
import sys

import httpx
import pytest
import starlette.testclient
from starlette.websockets import WebSocketDisconnect

MODE, _, STATE_FILE = os.environ.get("NGX_WSGI_REPLAY", "").partition(":")
InProcessClient = starlette.testclient.TestClient
_recorded = {}
_ports = {}
if MODE == "replay":
    with open(STATE_FILE) as f:
        _ports = json.load(f)


def app_key(app, root_path):
    """Where nginx can find `app`: the docs_src module that holds it at its top level."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("docs_src.") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is app and not attr.startswith("_"):
                return f"{name}:{attr}|{root_path}"
    return None


class RecordingClient(InProcessClient):
    def __init__(self, app, *args, **kwargs):
        key = app_key(app, kwargs.get("root_path", ""))
        if key:
            _recorded[key] = True
        super().__init__(app, *args, **kwargs)


class Forward(httpx.BaseTransport):
    """Sends the request to nginx's port, with the Host header and path the test asked for."""

    def __init__(self, app, port, root_path):
        self.app, self.port, self.root_path = app, port, root_path
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request):
        if getattr(self.app, "dependency_overrides", None):
            pytest.skip("the test overrides the app's dependencies in its own process")
        # A copy: the client compares a redirect's target with the request's own URL (and drops
        # credentials across origins), which must stay the one the test asked for.
        url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.port,
                                    raw_path=self.root_path.encode() + request.url.raw_path)
        sent = httpx.Request(request.method, url, headers=request.headers, stream=request.stream,
                             extensions=request.extensions)
        return self.inner.handle_request(sent)

    def close(self):
        self.inner.close()


class ReplayWebSocket:
    """starlette's WebSocketTestSession's methods, over a real WebSocket to nginx."""

    def __init__(self, url, subprotocols, headers):
        from websockets.sync.client import connect
        from websockets.exceptions import InvalidStatus

        try:
            self.ws = connect(url, subprotocols=subprotocols, additional_headers=headers,
                              open_timeout=10, close_timeout=5, max_size=None)
        except InvalidStatus as e:
            # The app closed before accepting: nginx answered 403 (starlette's TestClient
            # raises the app's close code; over HTTP there is only the status).
            raise WebSocketDisconnect(code=1008, reason=f"HTTP {e.response.status_code}") from None
        self.accepted_subprotocol = self.ws.subprotocol
        self.extra_headers = list(self.ws.response.headers.raw_items())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ws.close()
        return False

    def _recv(self):
        from websockets.exceptions import ConnectionClosed

        try:
            return self.ws.recv(timeout=20)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else 1006
            raise WebSocketDisconnect(code=code, reason=e.rcvd.reason if e.rcvd else "") from None

    def send_text(self, data):
        self.ws.send(data)

    def send_bytes(self, data):
        self.ws.send(bytes(data))

    def send_json(self, data, mode="text"):
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        self.ws.send(text if mode == "text" else text.encode())

    def receive_text(self):
        data = self._recv()
        return data if isinstance(data, str) else data.decode()

    def receive_bytes(self):
        data = self._recv()
        return data if isinstance(data, bytes) else data.encode()

    def receive_json(self, mode="text"):
        return json.loads(self._recv())

    def close(self, code=1000, reason=None):
        self.ws.close(code, reason or "")


class ReplayClient(InProcessClient):
    def __init__(self, app, *args, **kwargs):
        root_path = kwargs.get("root_path", "")
        key = app_key(app, root_path)
        super().__init__(app, *args, **kwargs)
        if key is None or key not in _ports:
            pytest.skip("the test builds its app in its own process: nginx cannot import it")
        self.replay_port = _ports[key]
        self.replay_root_path = root_path
        self.replay_app = app
        self._transport = Forward(app, self.replay_port, root_path)

    def __enter__(self):
        # The app's lifespan runs in nginx's worker, not here.
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def websocket_connect(self, url, subprotocols=None, **kwargs):
        if getattr(self.replay_app, "dependency_overrides", None):
            pytest.skip("the test overrides the app's dependencies in its own process")
        target = httpx.URL(url)
        path = self.replay_root_path + target.raw_path.decode()
        headers = [(k, v) for k, v in (kwargs.get("headers") or {}).items()]
        return ReplayWebSocket(f"ws://127.0.0.1:{self.replay_port}{path}", subprotocols, headers)


def pytest_configure(config):
    if MODE in ("record", "replay"):
        client = RecordingClient if MODE == "record" else ReplayClient
        starlette.testclient.TestClient = client
        import fastapi.testclient

        fastapi.testclient.TestClient = client


def pytest_unconfigure(config):
    if MODE == "record":
        with open(STATE_FILE, "w") as f:
            json.dump(sorted(_recorded), f)
