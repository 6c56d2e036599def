"""WebSocket under `asgi_app`: the handshake and the app's accept (subprotocol, headers),
denials, messages both ways, RFC 6455 details from raw frames (fragments, pings, UTF-8, masks,
sizes), closes from either side with their codes, failures, and close 1001 at quit and reload."""
import base64
import json
import os
import re
import signal
import socket
import ssl
import struct
import time
import zlib

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import APPS, FORWARDED_SCHEME, asgi_location as asgi, assert_unanswered, read_until, wait_for

APP = APPS / "asgi_ws.py"



@pytest.fixture(scope="module")
def server(nginx_factory):
    s = nginx_factory(asgi("/ws/", APP) + asgi("/small/", APP, "client_max_body_size 1k;")
                      + asgi("/unbuffered/", APP, "wsgi_request_buffering off;")).start()
    s.ws = f"ws://127.0.0.1:{s.port}"
    return s


def stats(server):
    return requests.get(server.url("/ws/stats"), timeout=10).json()



def test_echo_subprotocol_headers_and_scope(server):
    with connect(f"{server.ws}/ws/echo?e1", subprotocols=["chat", "other"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response.headers["x-accepted"] == "yes"
        assert "content-length" not in ws.response.headers
        ws.send("héllo")
        assert ws.recv() == "héllo"
        blob = os.urandom(1 << 20)
        ws.send(blob)
        assert ws.recv() == blob
        ws.send("scope")
        scope = json.loads(ws.recv())
        assert scope == {"type": "websocket", "scheme": "ws", "path": "/ws/echo", "root_path": "/ws",
                         "subprotocols": ["chat", "other"], "http_version": "1.1"}
        ws.ping().wait(5)
    wait_for(lambda: stats(server)["closed"].get("e1"), what="the app to see the close")
    assert stats(server)["closed"]["e1"] == [1000, ""]


def test_the_client_close_code_reaches_the_app(server):
    with connect(f"{server.ws}/ws/echo?e2") as ws:
        ws.close(4000, "done here")
    wait_for(lambda: stats(server)["closed"].get("e2"), what="the app to see the close")
    assert stats(server)["closed"]["e2"] == [4000, "done here"]
    assert stats(server)["closed-again"]["e2"] == ["websocket.disconnect", 4000, "done here"]


def test_a_subrequest_of_a_websocket_handshake_is_plain_http(nginx_factory):
    # A subrequest (mirror, auth_request) copies the client's headers: the Upgrade is not its to
    # take. Its app gets an HTTP scope, and the client's WebSocket is the main request's alone.
    s = nginx_factory(asgi("/ws/", APP, "mirror /seen/seen;") + asgi("/seen/", APP, "internal;")).start()
    with connect(f"ws://127.0.0.1:{s.port}/ws/echo?m1") as ws:
        for text in ("one", "two"):
            ws.send(text)
            assert ws.recv(timeout=10) == text
    assert requests.get(s.url("/ws/stats"), timeout=10).json()["seen"] == ["http m1"]


def test_wsgi_scheme_sets_the_scope_scheme_of_http_and_websocket(nginx_factory):
    s = nginx_factory(asgi("/ws/", APP, "wsgi_scheme $app_scheme;"), http_extra=FORWARDED_SCHEME).start()
    tls = {"X-Forwarded-Proto": "https"}
    assert requests.get(s.url("/ws/info"), headers=tls, timeout=10).json() == {"type": "http", "scheme": "https"}
    assert requests.get(s.url("/ws/info"), timeout=10).json() == {"type": "http", "scheme": "http"}
    for headers, scheme in [(tls, "wss"), ({}, "ws")]:
        with connect(f"ws://127.0.0.1:{s.port}/ws/echo", additional_headers=headers) as ws:
            ws.send("scope")
            assert json.loads(ws.recv())["scheme"] == scheme


def test_plain_http_to_the_same_app_is_an_http_scope(server):
    assert requests.get(server.url("/ws/info"), timeout=10).json() == {"type": "http", "scheme": "http"}


@pytest.mark.parametrize("path,status", [("/ws/deny", 403), ("/ws/return-without-accept", 403),
                                         ("/ws/deny-custom", 401), ("/ws/raise-before-accept", 500)])
def test_denials(server, path, status):
    key = f"denied-{path.rsplit('/', 1)[1]}"
    with pytest.raises(InvalidStatus) as e:
        with connect(f"{server.ws}{path}?{key}"):
            pass
    assert e.value.response.status_code == status
    if path in ("/ws/deny", "/ws/deny-custom"):
        # The app's receive() after its denial says the connection is over.
        wait_for(lambda: stats(server)["closed"].get(key) == ["websocket.disconnect", 1006],
                 what="websocket.disconnect after the denial")
    if status == 403:
        # An empty answer with its length, not a chunked empty body.
        headers = {k.lower(): v for k, v in e.value.response.headers.raw_items()}
        assert headers.get("content-length") == "0" and "transfer-encoding" not in headers, headers
    if status == 401:
        assert e.value.response.body == b"nope!\n"
    if status == 500:
        assert "RuntimeError: refusing by raising" in server.error_log()


def test_a_close_or_accept_before_reading_the_connect_is_served(server):
    """ASGI lets the app answer before it reads websocket.connect (Starlette's router closes
    a path it has no route for that way): a close is the 403 of a denial, an accept opens the
    socket, and the connect still comes first from receive()."""
    with pytest.raises(InvalidStatus) as e:
        with connect(f"{server.ws}/ws/unread-close?u1"):
            pass
    assert e.value.response.status_code == 403
    wait_for(lambda: stats(server)["received"].get("u1") == ["websocket.connect", "websocket.disconnect"],
             what="the connect, then the disconnect")
    with connect(f"{server.ws}/ws/unread-accept?u2") as ws:
        assert ws.recv() == "websocket.connect"
    assert "unexpected ASGI message" not in server.error_log()


def handshake_answer(server, headers, body=b"", prefix="/ws"):
    """The head and body nginx answers a raw upgrade request with `headers` (and `body`)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"GET {prefix}/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
                  + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)
        data = read_until(s, b"\r\n\r\n")
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += s.recv(65536)
        return head, body


KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(target):
    """A WebSocket handshake for `target`, as raw bytes."""
    return (f"GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
            + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("version", [[b"Sec-WebSocket-Version: 8"], []], ids=["8", "none"])
def test_another_websocket_version_gets_426_naming_13(server, version):
    head, body = handshake_answer(server, [KEY] + version)
    assert head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), head
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in head + b"\r\n" and b"\r\nUpgrade: websocket\r\n" in head + b"\r\n"
    # An Upgrade field goes with the `upgrade` connection option (RFC 9110 7.8), in any of the
    # Connection fields (nginx writes its own keep-alive).
    options = [o.strip().lower() for line in head.split(b"\r\n") if line.lower().startswith(b"connection:")
               for o in line.split(b":", 1)[1].split(b",")]
    assert b"upgrade" in options and b"keep-alive" in options, head
    assert b"version 13" in body


@pytest.mark.parametrize("headers,why", [
    ([b"Sec-WebSocket-Version: 13"], "no Sec-WebSocket-Key header"),
    ([b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: not-a-nonce"], "not 16 bytes in base64"),
    ([b"Sec-WebSocket-Version: 13", KEY, KEY], "more than one Sec-WebSocket-Key header"),
    ([b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 13", KEY], "more than one Sec-WebSocket-Version"),
], ids=["no-key", "bad-key", "two-keys", "two-versions"])
def test_a_malformed_handshake_gets_400_and_never_reaches_the_app(server, headers, why):
    head, body = handshake_answer(server, headers)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), head
    wait_for(lambda: why in server.error_log(), what="the reason in the error log")


@pytest.mark.parametrize("prefix", ["/ws", "/unbuffered"])
@pytest.mark.parametrize("framing,body", [(b"Content-Length: 5", b"hello"),
                                          (b"Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n")],
                         ids=["length", "chunked"])
def test_a_handshake_with_a_body_gets_400(server, prefix, framing, body):
    # After a 101 the body would be read as the client's frames.
    head, _ = handshake_answer(server, [b"Sec-WebSocket-Version: 13", KEY, framing], body, prefix)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), head
    wait_for(lambda: "client sent a WebSocket handshake with a body," in server.error_log(),
             what="the reason in the error log")


def test_a_subprotocol_the_client_did_not_offer_is_the_apps_error(server):
    for offered in (["chat"], None):
        with pytest.raises(InvalidStatus) as e:
            with connect(f"{server.ws}/ws/unoffered-subprotocol", subprotocols=offered):
                pass
        assert e.value.response.status_code == 500
    wait_for(lambda: "subprotocol \"graphql-ws\" is not one the client offered" in server.error_log(),
             what="the app's error in the log")


def test_the_app_closes_with_its_code(server):
    with connect(f"{server.ws}/ws/app-closes?c1") as ws:
        assert ws.recv() == "bye"
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
        assert (e.value.rcvd.code, e.value.rcvd.reason) == (4001, "go away")
    wait_for(lambda: stats(server)["closed"].get("c1"), what="the app to get the echo of its close")
    assert stats(server)["closed"]["c1"][0] == 4001


def test_an_app_that_raises_after_the_accept_closes_with_1011(server):
    with connect(f"{server.ws}/ws/raise-after-accept") as ws:
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
        assert e.value.rcvd.code == 1011
    assert "RuntimeError: broken after the accept" in server.error_log()
    assert "raised on an open WebSocket" in server.error_log()


# --- raw frames ------------------------------------------------------------------------------

def frame(opcode, payload, fin=True, mask=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Raw:
    """A client's socket after its handshake, with what arrived behind the 101."""

    def __init__(self, sock, pending=b""):
        self.sock, self.pending = sock, pending

    def exact(self, n):
        while len(self.pending) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.pending += chunk
        data, self.pending = self.pending[:n], self.pending[n:]
        return data

    def sendall(self, data):
        self.sock.sendall(data)

    def recv(self, n):
        if self.pending:
            data, self.pending = self.pending[:n], self.pending[n:]
            return data
        return self.sock.recv(n)

    def setsockopt(self, *args):
        self.sock.setsockopt(*args)

    def close(self):
        self.sock.close()


def read_frame(raw, rsv=False):
    b0, b1 = raw.exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", raw.exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", raw.exact(8))[0]
    if rsv:
        return b0 & 0x0F, b0 & 0x70, raw.exact(n)
    return b0 & 0x0F, raw.exact(n)


def deflated(data):
    """A permessage-deflate message payload (RFC 7692 7.2.1)."""
    z = zlib.compressobj(wbits=-15)
    return (z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inflated(payload):
    return zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")


DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def raw_socket(server, path, early=b"", extra=b""):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16)) if not early else b"dGhlIHNhbXBsZSBub25jZQ=="
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n" + early)
    data = read_until(s, b"\r\n\r\n")
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols"), head
    assert b"Connection: upgrade" in head and b"Upgrade: websocket" in head
    raw = Raw(s, rest)
    raw.head = head
    return raw


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0]


def test_fragments_with_a_ping_between(server):
    s = raw_socket(server, "/ws/echo?frag")
    s.sendall(frame(0x1, b"frag", fin=False) + frame(0x9, b"ping!") + frame(0x0, b"men", fin=False)
              + frame(0x0, b"ted"))
    assert read_frame(s) == (0xA, b"ping!"), "the pong first, with the ping's payload"
    assert read_frame(s) == (0x1, b"fragmented")
    s.sendall(frame(0x8, struct.pack("!H", 1000)))
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == 1000
    assert s.recv(10) == b"", "the server closes the connection after the close handshake"
    s.close()


def test_frames_sent_right_behind_the_handshake(server):
    s = raw_socket(server, "/ws/echo?early", early=frame(0x1, b"early bird"))
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in s.head
    assert read_frame(s) == (0x1, b"early bird")
    s.close()


@pytest.mark.parametrize("frames,code", [
    (frame(0x1, b"\xff\xfe bad utf-8"), 1007),
    (frame(0x1, b"unmasked", mask=False), 1002),
    (frame(0x3, b"reserved opcode"), 1002),
    (frame(0x9, b"p" * 200), 1002),  # a control frame over 125 bytes
    # A 64-bit length whose most significant bit is set (RFC 6455 5.2: it MUST be 0), not a
    # message over the size limit.
    (bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63 | 5) + b"\0" * 4 + b"x" * 5, 1002),
], ids=["bad-utf8", "unmasked", "reserved-opcode", "long-ping", "length-top-bit"])
def test_broken_frames_close_with_their_code(server, frames, code):
    s = raw_socket(server, f"/ws/echo?bad{code}")
    s.sendall(frames)
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == code
    if code == 1007:
        assert payload[2:] == b"invalid UTF-8 (a text message or a close reason)"
    s.close()
    # Said in the error log, as nginx says it of a broken request (at info).
    wait_for(lambda: re.search(rf"\[info\].*asgi: client's WebSocket frames broke the protocol: .*; closed with "
                               rf"{code}, client: 127\.0\.0\.1, .*request: \"GET /ws/echo\?bad{code} HTTP/1\.1\"",
                               server.error_log()), what="the entry")


def test_a_message_over_client_max_body_size_closes_with_1009(server):
    s = raw_socket(server, "/small/echo?big")
    s.sendall(frame(0x2, b"x" * 2000))
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == 1009
    s.close()
    # Said in the error log, as nginx's 413 is (at error): a limit met by a proxied socket's
    # messages never, so one moved from proxy_pass needs to know.
    wait_for(lambda: re.search(r"\[error\].*asgi: client sent a WebSocket message over client_max_body_size "
                               r"\(1024 bytes\): .*; closed with 1009, client: .*request: \"GET /small/echo\?big",
                               server.error_log()), what="the entry")


def test_permessage_deflate_both_ways(server):
    with connect(f"{server.ws}/ws/echo?z1") as ws:
        # Neither side keeps a context between messages: no zlib state per open socket.
        assert ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        text = json.dumps([{"id": i, "name": "item", "tags": ["a", "b"]} for i in range(2000)])
        ws.send(text)
        assert ws.recv() == text
        blob = os.urandom(300_000)
        ws.send(blob)
        assert ws.recv() == blob
        # Sizes whose well-compressed input ends just as an inflate buffer fills up.
        for size in (256, 512, 1024, 4096, 65536):
            ws.send("a" * size)
            assert ws.recv() == "a" * size
    # On the wire: a compressed message in fragments (a ping between) comes back as one
    # compressed frame; a short one is sent as it is.
    s = raw_socket(server, "/ws/echo?z2", extra=DEFLATE)
    assert b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover" in s.head
    text = ("compressible " * 1000).encode()
    payload = deflated(text)
    first = frame(0x1, payload[:10], fin=False)
    s.sendall(bytes([first[0] | 0x40]) + first[1:] + frame(0x9, b"p")
              + frame(0x0, payload[10:]) + frame(0x1, b"short"))
    assert read_frame(s) == (0xA, b"p")
    opcode, rsv, echoed = read_frame(s, rsv=True)
    assert (opcode, rsv) == (0x1, 0x40) and len(echoed) < len(text) // 10
    assert inflated(echoed) == text
    assert read_frame(s, rsv=True) == (0x1, 0, b"short")
    s.close()


def test_a_compressed_message_over_the_limit_or_broken_closes_the_socket(server):
    # 1 MiB of zeros in about a kilobyte: the limit (client_max_body_size 1k) is the inflated size.
    s = raw_socket(server, "/small/echo?bomb", extra=DEFLATE)
    bomb = frame(0x2, deflated(bytes(1 << 20)))
    s.sendall(bytes([bomb[0] | 0x40]) + bomb[1:])
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == 1009
    s.close()
    s = raw_socket(server, "/ws/echo?garbage", extra=DEFLATE)
    broken = frame(0x1, b"\xff\xff\xff\xff not deflate")
    s.sendall(bytes([broken[0] | 0x40]) + broken[1:])
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == 1007
    s.close()
    # A new message before the compressed one's last fragment.
    s = raw_socket(server, "/ws/echo?interloper", extra=DEFLATE)
    first = frame(0x1, deflated(b"a fragmented message")[:5], fin=False)
    s.sendall(bytes([first[0] | 0x40]) + first[1:] + frame(0x1, b"interloper"))
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == 1002
    s.close()
    # Without the extension negotiated, RSV1 breaks the protocol.
    s = raw_socket(server, "/ws/echo?rsv1")
    assert b"Sec-WebSocket-Extensions" not in s.head
    s.sendall(bytes([bomb[0] | 0x40]) + bomb[1:])
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == 1002
    s.close()


def test_an_app_cannot_claim_an_extension(server):
    with pytest.raises(InvalidStatus) as e:
        with connect(f"{server.ws}/ws/accept-with-extensions"):
            pass
    assert e.value.response.status_code == 500
    assert "websocket.accept: Sec-WebSocket-Extensions is the server's to set" in server.error_log()


def test_compression_can_be_turned_off(nginx_factory):
    s = nginx_factory(asgi("/ws/", APP, "asgi_websocket_compression off;")).start()
    with connect(f"ws://127.0.0.1:{s.port}/ws/echo?off") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("x" * 10_000)
        assert ws.recv() == "x" * 10_000


def test_a_client_that_vanishes_is_1006_for_the_app(server):
    s = raw_socket(server, "/ws/hold?vanish")
    assert read_frame(s) == (0x1, b"held")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_for(lambda: stats(server)["closed"].get("vanish"), what="the app to see the client go")
    assert stats(server)["closed"]["vanish"][0] == 1006


def test_a_client_that_floods_an_app_that_does_not_read_is_paused(server):
    # The app counts what it receives; the client sends far more than wsgi_stream_buffer
    # (256k) without waiting: nginx reads it as the app takes it, the worker's memory stays
    # bounded, and every byte arrives.
    s = raw_socket(server, "/ws/count?flood")
    payload = b"f" * 65536
    for _ in range(64):
        s.sendall(frame(0x2, payload))
    s.sendall(frame(0x8, struct.pack("!H", 1000)))
    opcode, _ = read_frame(s)
    assert opcode == 0x8
    s.close()
    wait_for(lambda: stats(server)["received"].get("flood"), what="the app to count")
    assert stats(server)["received"]["flood"] == 64 * 65536


def test_a_client_that_pings_without_reading_the_pongs_is_paused(server):
    # Each ping makes a pong; a client that never reads them is not read either once
    # wsgi_stream_buffer (256k) of them waits unsent, so its sends block long before 64 MiB
    # (what the socket buffers on both sides hold is a few MiB) instead of growing the worker.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", server.port))
    s.sendall(upgrade("/ws/hold?pingflood"))
    assert read_until(s, b"\r\n\r\n").startswith(b"HTTP/1.1 101")
    pings = frame(0x9, b"p" * 125) * 1000
    s.settimeout(3)
    with pytest.raises(socket.timeout):
        for _ in range((64 << 20) // len(pings)):
            s.sendall(pings)
    # The worker serves others meanwhile (it neither spins nor waits on this client).
    assert stats(server)["received"] is not None
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_for(lambda: stats(server)["closed"].get("pingflood"), what="the app to see the client go")


def test_a_client_that_goes_before_the_accept(nginx_factory):
    server = nginx_factory(asgi("/", APP)).start()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(upgrade("/gone-before-accept?early-gone"))
    # Started: a handshake whose client goes while it waits for the loop never runs.
    wait_for(lambda: "early-gone" in requests.get(server.url("/stats"), timeout=10).json()["started"],
             what="the app to start")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_for(lambda: requests.get(server.url("/stats"), timeout=10).json()["closed"].get("early-gone"), what="the app to see the client go")
    assert server.stop() == 0
    log = server.error_log()
    assert "request(s) inside Python" not in log and "Traceback" not in log, "the request ended with the app"


def slow_client(server, target, rcvbuf=16384, tls_context=None):
    """A client with a small receive buffer (so that the server's writes block soon), after its
    handshake for `target`: its socket, and what came right behind the 101."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    if tls_context:
        sock = tls_context.wrap_socket(sock, server_hostname="test.local")
    sock.sendall(upgrade(target))
    head, _, rest = read_until(sock, b"\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def test_a_slow_reader_that_takes_what_it_is_sent_is_not_idle(nginx_factory):
    # A client reading a busy socket slowly sees each ping only behind what was queued before
    # it (seconds of it here), so its pong comes late; it takes bytes all along, and must not
    # be closed as idle.
    server = nginx_factory(asgi("/", APP, "asgi_websocket_ping_interval 1s; asgi_websocket_idle_timeout 2s; "
                                          "wsgi_stream_buffer 16k;"), listen_extra=" sndbuf=16k").start()
    sock, rest = slow_client(server, "/firehose?slow")
    raw = Raw(sock, rest)
    taken, pongs = 0, 0
    until = time.monotonic() + 6
    while time.monotonic() < until:
        opcode, payload = read_frame(raw)
        assert opcode != 8, f"closed: {close_code(payload)} {payload[2:]!r}"
        if opcode == 9:
            raw.sendall(frame(10, payload))
            pongs += 1
        taken += len(payload)
        time.sleep(0.5)  # a frame (16 KiB) per half second: what was queued ahead of a ping takes seconds
    assert pongs >= 1 and taken >= 8 * 16384, (pongs, taken)
    raw.close()


def test_a_slow_reader_gets_everything_sent_before_the_close(nginx_factory):
    # The close frame waits behind what the app sent before it (wsgi_stream_buffer's worth).
    # The client's time to answer the close began when it was queued, not sent: a client that
    # took 7 s to read it all was cut after 5 s, its last messages and the close lost (1006).
    server = nginx_factory(asgi("/", APP), listen_extra=" sndbuf=16k").start()
    sock, data = slow_client(server, "/burst-then-close?slow&20")
    frames = []
    while not frames or frames[-1][0] != 8:
        while True:
            parsed = parse_frame(data)
            if parsed is None:
                break
            frames.append(parsed[0])
            data = parsed[1]
        if frames and frames[-1][0] == 8:
            break
        chunk = sock.recv(4096)
        assert chunk, f"cut after {len(frames)} frames"
        data += chunk
        time.sleep(0.1)  # about 40 KB/s: the 320 KB take 8 s
    sock.sendall(frame(8, struct.pack("!H", 1000)))
    assert [(op, len(p), p[:1]) for op, p in frames[:-1]] == [(2, 16384, bytes([i])) for i in range(20)]
    assert close_code(frames[-1][1]) == 1000 and frames[-1][1][2:] == b"all sent"
    closed = lambda: requests.get(server.url("/stats"), timeout=10).json()["closed"].get("slow&20")  # noqa: E731
    wait_for(closed, what="the app to see the close")
    assert closed() == [1000, ""]
    sock.close()


def test_a_tls_socket_whose_writes_block_keeps_streaming(nginx_factory, tmp_path):
    # A write OpenSSL could not finish must be retried from the same address (nginx does not
    # let it move), and the frames the app sent meanwhile grew (and moved) the output: the
    # retry failed, "SSL_write() failed (bad write retry)", and the socket was dropped.
    from conftest import tls
    config = tls(tmp_path)["nginx"]
    server = nginx_factory(asgi("/", APP, "wsgi_stream_buffer 1m;"), listen_extra=config["listen_extra"] + " sndbuf=16k",
                           server_extra=config["server_extra"]).start()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sock, rest = slow_client(server, "/firehose?tls", rcvbuf=8192, tls_context=context)
    got = len(rest)
    while got < 3_000_000:
        chunk = sock.recv(2048)  # slowly: the server's writes block, over and over
        assert chunk, f"dropped after {got} bytes: {server.error_log()[-2000:]}"
        got += len(chunk)
        time.sleep(0.001)
    sock.close()
    assert "bad write retry" not in server.error_log()


def parse_frame(data):
    """One unmasked frame from the start of `data`: ((opcode, payload), rest), or None."""
    if len(data) < 2:
        return None
    n, at = data[1] & 0x7F, 2
    if n == 126:
        if len(data) < 4:
            return None
        n, at = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        if len(data) < 10:
            return None
        n, at = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < at + n:
        return None
    return (data[0] & 0x0F, data[at:at + n]), data[at + n:]


@pytest.mark.parametrize("tcp", ["closed", "open"])
def test_a_send_after_the_clients_close_frame_raises(server, tcp):
    # The client's close is in (and answered) before the app has received the disconnect: its
    # message would be dropped, so its send says the client closed, as uvicorn's does, whether
    # or not the client has closed its TCP connection yet; its close is taken, the closing
    # handshake being under way already.
    key = f"sc-{tcp}"
    raw = raw_socket(server, f"/ws/send-after-client-close?{key}")
    raw.sendall(frame(8, struct.pack("!H", 1000)))
    assert read_frame(raw) == (8, struct.pack("!H", 1000))
    if tcp == "closed":
        raw.sock.close()
    requests.get(server.url(f"/ws/release?{key}"), timeout=10)
    wait_for(lambda: "received" in stats(server)["after_close"].get(key, {}), what="the app's sends")
    assert stats(server)["after_close"][key] == {"send": "ClientDisconnected", "close": "sent", "received": [1000]}
    raw.sock.close()


def test_subscriptions_the_client_closes_are_cancelled_before_a_send_raises(server):
    # Strawberry's GraphQL subscriptions: a send in the instant between the client's close
    # frame and the listening task's wake-up raised ClientDisconnected in the subscription's
    # task, which Strawberry logged as an error (a third of them; none under uvicorn). Those
    # sends now wait until the listening task is told (as uvicorn's wait for the connection's
    # end), which cancels the subscriptions first. An app that does not cancel them has their
    # sends raise once it is told.
    keys = [f"subs{n}" for n in range(12)]
    for key in keys:
        with connect(f"{server.ws}/ws/subscriptions?{key}") as ws:
            for _ in range(10):
                ws.recv(timeout=10)
    wait_for(lambda: all(stats(server)["subscriptions"].get(k, {}).get("done") for k in keys),
             what="the subscriptions' ends")
    outcomes = [stats(server)["subscriptions"][k] for k in keys]
    assert all(o["cancelled"] == 3 and o["raised"] == [] for o in outcomes), outcomes
    with connect(f"{server.ws}/ws/subscriptions?deaf1&deaf") as ws:
        ws.recv(timeout=10)
    wait_for(lambda: stats(server)["subscriptions"].get("deaf1", {}).get("done"), what="the deaf app's end")
    deaf = stats(server)["subscriptions"]["deaf1"]
    assert (deaf["cancelled"], deaf["raised"]) == (0, ["ClientDisconnected"] * 3), deaf
    # The race made certain: the sender runs at every turn of the loop (its client reads
    # everything, so that nothing pauses).
    import threading
    raw = raw_socket(server, "/ws/subscriptions?busy&busy")
    threading.Thread(target=lambda: drain_socket(raw.sock), daemon=True).start()
    wait_for(lambda: stats(server)["subscriptions"].get("busy", {}).get("sent", 0) > 100, what="the sends")
    raw.sendall(frame(8, struct.pack("!H", 1000)))
    wait_for(lambda: stats(server)["subscriptions"]["busy"].get("done"), what="the app's end")
    outcome = stats(server)["subscriptions"]["busy"]
    assert (outcome["cancelled"], outcome["raised"]) == (1, []), outcome
    raw.close()


def drain_socket(sock):
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def test_an_accept_after_the_client_went_raises(nginx_factory):
    # As any send on a closed connection (ASGI 2.4; uvicorn raises there too): the app learns
    # at once that there is no one to talk to.
    server = nginx_factory(asgi("/", APP)).start()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(upgrade("/accept-after-release?late"))
    wait_for(lambda: "late" in requests.get(server.url("/stats"), timeout=10).json()["started"],
             what="the app to start")
    s.close()
    wait_for(lambda: "client prematurely closed connection" in server.error_log(), what="nginx to see the client go")
    requests.get(server.url("/release?late"), timeout=10)
    wait_for(lambda: requests.get(server.url("/stats"), timeout=10).json()["late_accept"].get("late"),
             what="the app's accept")
    late = requests.get(server.url("/stats"), timeout=10).json()["late_accept"]["late"]
    assert late.startswith("ClientDisconnected: "), late


# --- wsgi_read_timeout: the app's time to accept or deny --------------------------------------

@pytest.fixture(scope="module")
def timed(nginx_factory):
    s = nginx_factory(asgi("/t/", APP, "wsgi_read_timeout 500ms;")).start()
    s.ws = f"ws://127.0.0.1:{s.port}"
    return s


def test_an_app_that_neither_accepts_nor_denies_gets_a_504(timed):
    s = socket.create_connection(("127.0.0.1", timed.port), timeout=10)
    s.sendall(upgrade("/t/never-accepts?n1"))
    head = read_until(s, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504"), head
    s.close()
    needle = ('wsgi_read_timeout: "GET /t/never-accepts?n1 HTTP/1.1" has neither accepted nor denied its '
              'WebSocket after 500 ms')
    wait_for(lambda: needle in timed.error_log(), what="the timeout's log entry")
    wait_for(lambda: "n1" in requests.get(timed.url("/t/stats"), timeout=10).json()["cancelled"],
             what="the app's task to be cancelled")
    entry = timed.error_log().split(needle, 1)[1]
    assert "never-accepts" not in entry.split("\n", 1)[0]
    assert "asgi_ws.py" in entry and "in app" in entry, "where the task waited"
    wait_for(lambda: 'the task of "GET /t/never-accepts?n1 HTTP/1.1" ended after its deadline' in timed.error_log(),
             what="the task's end")
    assert 'the application raised while serving "GET /t/never-accepts?n1' not in timed.error_log()


def test_the_read_timeout_ends_at_the_accept(timed):
    with connect(f"{timed.ws}/t/echo?t2") as ws:
        # Longer than wsgi_read_timeout: an accepted socket is under the WebSocket timeouts.
        time.sleep(1.0)
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"
    assert 'wsgi_read_timeout: "GET /t/echo?t2' not in timed.error_log()


def test_a_denial_in_time_is_not_timed_out(timed):
    with pytest.raises(InvalidStatus) as e:
        connect(f"{timed.ws}/t/deny-custom?t3")
    assert e.value.response.status_code == 401
    time.sleep(1.0)
    assert 'wsgi_read_timeout: "GET /t/deny-custom?t3' not in timed.error_log()


# --- worker exit -------------------------------------------------------------------------------

def told_to_go(server, path, sig, code=1001):
    """A socket the app holds open (it sends "held"), then `sig` to nginx's master: the socket
    gets a close frame with `code`. The socket and that frame's payload."""
    s = raw_socket(server, path)
    assert read_frame(s) == (0x1, b"held")
    server.send_signal(sig)
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == code, payload
    return s, payload


@pytest.mark.parametrize("how", [signal.SIGQUIT, signal.SIGHUP])
def test_open_sockets_get_1001_at_quit_and_reload(nginx_factory, how):
    server = nginx_factory(asgi("/", APP)).start()
    old = server.worker_pids()
    s, payload = told_to_go(server, "/hold?exit", how)
    s.sendall(frame(0x8, payload[:2]))
    assert s.recv(10) == b""
    s.close()
    if how == signal.SIGQUIT:
        assert server.proc.wait(timeout=30) == 0
    wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(), what="a clean exit")


def test_a_reload_closes_open_sockets_as_its_drain_begins(nginx_factory):
    # The drain serves the next request of each idle keep-alive connection for up to 2 s; a
    # WebSocket told to go only at nginx's exit, after it, stayed that long on the old code
    # (a browser keeps idle connections: every reload). It is told as the drain begins, once
    # the idle connections are closed: a browser sent its reconnect on one of them, to the old
    # worker (an Engine.IO session opened there died with it: "Invalid session").
    server = nginx_factory(asgi("/", APP) + 'location = /kept { return 200 "kept\\n"; }\n').start()
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    kept.sendall(b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_until(kept, b"kept\n").endswith(b"kept\n")
    s, payload = told_to_go(server, "/hold?drain", signal.SIGHUP)
    # The idle connection closed before the close frame went out: what its client sends now
    # gets no answer from the old worker.
    assert_unanswered(kept, b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
    log = server.error_log()
    assert "told to quit by a reload: this worker stops accepting" in log
    assert "1 long-lived connection(s) (WebSockets, event streams) to send to other workers" in log, log[-2000:]
    s.sendall(frame(0x8, payload[:2]))
    assert s.recv(10) == b""
    s.close()
    kept.close()


def test_a_proxied_websocket_leaves_the_reload_drain_as_it_is(nginx_factory):
    # The drain closes idle connections early only for the clients it then tells to go: a
    # WebSocket proxied to another server is nginx's, which ends it after the drain; meanwhile
    # an idle connection's next request is served, as with no WebSocket open.
    import threading
    from websockets.sync.server import serve
    with serve(lambda ws: [ws.send(m) for m in ws], "127.0.0.1", 0) as upstream:
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        port = upstream.socket.getsockname()[1]
        proxied = (f"location /proxied {{ proxy_pass http://127.0.0.1:{port}; proxy_http_version 1.1; "
                   "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; }\n")
        server = nginx_factory(asgi("/", APP) + proxied + 'location = /kept { return 200 "kept\\n"; }\n').start()
        with connect(f"ws://127.0.0.1:{server.port}/proxied", open_timeout=10) as ws:
            ws.send("through")
            assert ws.recv(timeout=10) == "through"
            kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            kept.sendall(b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_until(kept, b"kept\n").endswith(b"kept\n")
            server.send_signal(signal.SIGHUP)
            wait_for(lambda: "told to quit by a reload" in server.error_log(), what="the drain")
            kept.sendall(b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = read_until(kept, b"kept\n")
            assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer, answer
            kept.close()
        assert "long-lived connection(s)" not in server.error_log()
        upstream.shutdown()


def test_the_close_code_at_a_reload_can_be_1012_service_restart(nginx_factory):
    # Python's websockets takes 1001 for a clean close (ConnectionClosedOK): a client that
    # reconnects only after an error (Prefect's task workers) stopped at every reload. uvicorn
    # sends 1012 at its shutdown.
    server = nginx_factory(asgi("/", APP, "asgi_websocket_exit_code 1012;")).start()
    s, payload = told_to_go(server, "/hold?exit", signal.SIGHUP, code=1012)
    assert payload[2:] == b"the server is restarting"
    s.sendall(frame(0x8, payload[:2]))
    assert s.recv(10) == b""
    s.close()
    result = nginx_factory(asgi("/", APP, "asgi_websocket_exit_code 1000;")).run("-t")
    assert result.returncode != 0
    assert 'asgi_websocket_exit_code "1000": expected 1001 (going away) or 1012 (service restart)' in result.stderr


def test_a_client_that_never_answers_the_close_at_quit_leaves_no_socket_open(nginx_factory):
    # nginx's shutdown timer (worker_shutdown_timeout, shorter than the 5 s close wait) closed
    # the connection under the socket; ended as a finished one when the wait was over, it was
    # left open as the worker exited: "open socket left", then "aborting".
    server = nginx_factory(asgi("/", APP), main_extra="worker_shutdown_timeout 1s;").start()
    old = server.worker_pids()
    s, _ = told_to_go(server, "/hold?silent", signal.SIGQUIT)
    assert server.proc.wait(timeout=30) == 0
    s.close()
    log = server.error_log()
    assert f"worker process {old[0]} exited with code 0" in log, log[-3000:]
    assert "open socket" not in log and "[alert]" not in log, log[-3000:]


def test_a_socket_accepted_while_the_worker_exits_gets_1001(nginx_factory, tmp_path):
    # A Channels consumer that looks its user up before accepting: the reload comes first.
    import threading
    server = nginx_factory(asgi("/", APP)).start()
    old = server.worker_pids()
    ready = tmp_path / "accept"
    opened = {}
    opener = threading.Thread(target=lambda: opened.setdefault("s", raw_socket(server, f"/accept-when?{ready}")))
    opener.start()
    wait_for(lambda: ws_stats(server, "/")["received"].get(str(ready)) == "waiting", what="the app to wait")
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "waiting for 1 request(s) inside Python before exiting" in server.error_log(),
             what="the old worker's first check while it exits")
    ready.touch()
    opener.join(timeout=20)
    s = opened["s"]
    assert read_frame(s) == (0x1, b"held")
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == 1001
    s.sendall(frame(0x8, payload[:2]))
    assert s.recv(10) == b""
    s.close()
    wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(), what="a clean exit")


def test_a_task_left_running_at_exit_is_cancelled_with_a_warning(nginx_factory):
    # The app never reads, so the close at reload does not end its task: the worker waits
    # wsgi_shutdown_timeout for it, then cancels it. That is the server's doing, logged as a
    # warning with where the task waited, not as the app raising CancelledError.
    server = nginx_factory(asgi("/", APP), http_extra="wsgi_shutdown_timeout 2s;").start()
    old = server.worker_pids()
    s, _ = told_to_go(server, "/deaf?left", signal.SIGHUP)
    s.close()
    wait_for(lambda: f"worker process {old[0]} exited with code 0" in server.error_log(), what="the old worker's exit")
    log = server.error_log()
    assert "1 app task(s) still running after the shutdown timeout (2000 ms) are cancelled" in log
    warning = re.search(r"^(\S+ \S+) \[warn\].*the task of \"GET /deaf\?left HTTP/1.1\" was still running when the "
                        r"worker exited.*\n(?:.*\n)*?.*await asyncio.sleep\(3600\)", log, re.M)
    assert warning, log[-3000:]
    # Written by the event loop's thread while the worker's own loop waited for it: the entry
    # carries the time it was written, at least the 2 s timeout after the worker began to exit.
    began = re.search(rf"^(\S+ \S+) \[notice\] {old[0]}#\d+: gracefully shutting down$", log, re.M)
    assert began, log[-3000:]
    stamp = lambda text: time.mktime(time.strptime(text, "%Y/%m/%d %H:%M:%S"))
    assert stamp(warning.group(1)) - stamp(began.group(1)) >= 2, (began.group(0), warning.group(0))
    assert "CancelledError" not in "".join(l for l in log.splitlines(True) if "[error]" in l)
    assert "the application raised on an open WebSocket" not in log


# --- keepalive: the server's pings and the idle timeout ----------------------------------------

@pytest.fixture(scope="module")
def keepalive(nginx_factory):
    s = nginx_factory(
        asgi("/pings/", APP, "asgi_websocket_ping_interval 100ms; asgi_websocket_idle_timeout 0;")
        + asgi("/lively/", APP, "asgi_websocket_ping_interval 100ms; asgi_websocket_idle_timeout 3s;")
        + asgi("/idle/", APP, "asgi_websocket_ping_interval 0; asgi_websocket_idle_timeout 300ms;")
        + asgi("/quiet/", APP, "asgi_websocket_idle_timeout 300ms;"),
        http_extra="asgi_websocket_ping_interval 1h;",
    ).start()
    return s


def ws_stats(server, prefix):
    return requests.get(server.url(f"{prefix}stats"), timeout=10).json()


def test_the_server_pings_open_sockets(keepalive):
    s = raw_socket(keepalive, "/pings/hold?pinged")
    assert read_frame(s) == (0x1, b"held")
    for _ in range(3):
        opcode, payload = read_frame(s)
        assert opcode == 0x9, "a ping from the server"
        s.sendall(frame(0xA, payload))
    s.sendall(frame(0x8, struct.pack("!H", 1000)))
    opcode, payload = read_frame(s)
    assert opcode == 0x8 and close_code(payload) == 1000
    s.close()


def test_pongs_count_as_the_client_being_alive(keepalive):
    # 40 pings at 100 ms: far longer than the 3 s idle timeout, answered, and never closed.
    s = raw_socket(keepalive, "/lively/hold?lively")
    assert read_frame(s) == (0x1, b"held")
    for _ in range(40):
        opcode, payload = read_frame(s)
        assert opcode == 0x9, f"only pings while the client answers them, not {opcode:#x} {payload!r}"
        s.sendall(frame(0xA, payload))
    s.close()


def test_an_idle_client_is_closed_with_1001_and_the_app_told(keepalive):
    s = raw_socket(keepalive, "/idle/hold?idle")
    assert read_frame(s) == (0x1, b"held")
    opcode, payload = read_frame(s)
    assert (opcode, close_code(payload), payload[2:]) == (0x8, 1001, b"idle timeout")
    s.sendall(frame(0x8, payload[:2]))
    assert s.recv(10) == b"", "the server closes the connection after the close handshake"
    s.close()
    wait_for(lambda: ws_stats(keepalive, "/idle/").get("closed", {}).get("idle"), what="the app to see the close")
    assert ws_stats(keepalive, "/idle/")["closed"]["idle"][0] == 1001


def test_a_dead_client_is_dropped_and_the_app_told_1006(keepalive):
    # It neither answers the pings (the location inherits a 1 h interval: none come) nor the
    # close: after the close's wait the connection is dropped.
    s = raw_socket(keepalive, "/quiet/hold?dead")
    assert read_frame(s) == (0x1, b"held")
    opcode, payload = read_frame(s)
    assert (opcode, close_code(payload)) == (0x8, 1001)
    wait_for(lambda: ws_stats(keepalive, "/quiet/").get("closed", {}).get("dead"), what="the app to see the drop")
    assert ws_stats(keepalive, "/quiet/")["closed"]["dead"][0] == 1006
    assert s.recv(10) == b"", "the connection is closed"
    s.close()


@pytest.mark.parametrize("directive,value", [("asgi_websocket_ping_interval", "often"),
                                             ("asgi_websocket_idle_timeout", "-5s"),
                                             ("asgi_websocket_compression", "maybe")])
def test_bad_websocket_values_fail_the_configuration_check(nginx_factory, directive, value):
    result = nginx_factory(asgi("/", APP, f"{directive} {value};")).run("-t")
    assert result.returncode != 0
    assert f'"{directive}"' in result.stderr and "invalid value" in result.stderr
