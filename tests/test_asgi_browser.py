"""A real browser (Debian's Chromium, headless) against `asgi_app`, over plain HTTP/1.1 and over
TLS with HTTP/2: its WebSocket client (subprotocols, permessage-deflate as browsers offer it,
text and binary messages to 1 MiB, close codes both ways, a denied handshake; over HTTP/2 the
browser opens it on an HTTP/1.1 connection of its own), EventSource's reconnection with
Last-Event-ID, many event streams held at once on one HTTP/2 connection, fetch() reading a
streamed response piece by piece, and a 3 MiB upload. The page's script does the exchanges and
posts what it saw; the app keeps what it saw of them."""
import pathlib
import os
import shutil
import signal
import subprocess
import tempfile

import pytest
import requests

from conftest import APPS, asgi_location, tls, wait_for

CHROMIUM = shutil.which("chromium")
# The HTTP/2 server's certificate is self-signed, made for the test.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture(scope="module", params=["http/1.1", "h2"])
def browsed(request, nginx_factory):
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (scripts/install-deps installs it)")
    profile = tempfile.mkdtemp(prefix="ngx-wsgi-chromium-")
    location = asgi_location("/b/", APPS / "asgi_browser.py", "client_max_body_size 8m;")
    if request.param == "h2":
        server = nginx_factory(location, **tls(pathlib.Path(profile))["nginx"]).start()
        page = server.url("/b/page").replace("http://", "https://")
    else:
        server = nginx_factory(location).start()
        page = server.url("/b/page")
    server.transport = request.param
    # --no-sandbox: Chromium's sandbox refuses to run as root, which CI is.
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--ignore-certificate-errors",
         "--disable-crash-reporter", "--disable-breakpad",
         f"--user-data-dir={profile}", page],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # The page's own steps are bounded (20 s each): it always posts what it saw.
        wait_for(lambda: seen(server)["browser"] is not None, timeout=180, what="the page's results")
        yield server, seen(server)
    finally:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)


def seen(server):
    url = server.url("/b/seen")
    if server.transport == "h2":
        url = url.replace("http://", "https://")
    return requests.get(url, timeout=10, verify=False).json()


def test_the_page_came_over_the_transport_under_test(browsed):
    server, s = browsed
    assert s["browser"]["protocol"] == server.transport
    assert s["page_host"] == [f"127.0.0.1:{server.port}"]


def test_websocket_echo_with_the_browsers_own_offer(browsed):
    server, s = browsed
    echo = s["browser"]["echo"]
    assert echo["protocol"] == "v2.chat"
    # Chromium offers permessage-deflate with client_max_window_bits; it took the module's answer.
    assert echo["extensions"].startswith("permessage-deflate")
    assert echo["textsBack"] == [True] * 7
    assert echo["binariesBack"] == [True] * 4
    assert echo["inOrder"] is True
    assert echo["close"] == {"code": 4001, "reason": "the browser is done", "clean": True}
    wait_for(lambda: seen(server)["closed"].get("echo"), what="the app to see the close")
    assert seen(server)["closed"]["echo"] == [4001, "the browser is done"]


def test_a_close_from_the_app_reaches_the_browser_cleanly(browsed):
    server, s = browsed
    assert s["browser"]["serverCloses"] == {
        "first": "bye soon", "protocol": "",
        "close": {"code": 4002, "reason": "the server says bye", "clean": True}}
    wait_for(lambda: seen(server)["closed"].get("server-closes"), what="the app to see the close")
    assert seen(server)["closed"]["server-closes"] == ["websocket.disconnect", 4002]


def test_a_denied_handshake_fails_in_the_browser(browsed):
    _, s = browsed
    assert s["browser"]["denied"] == {"opened": False, "errored": True, "close": {"code": 1006, "clean": False}}


def test_event_source_reconnects_with_the_last_event_id(browsed):
    server, s = browsed
    assert s["browser"]["events"] == [["one", "1"], ["two", "2"]]
    assert seen(server)["last_event_ids"] == [None, "1"]
    # The browser's close() of the held stream reaches the app as http.disconnect.
    wait_for(lambda: seen(server).get("sse_disconnect"), what="the app to see the stream's end")


def test_event_streams_held_at_once(browsed):
    server, s = browsed
    held = s["browser"]["heldStreams"]
    count = 24 if server.transport == "h2" else 4
    assert held == {"count": count, "allAnswered": True, "open": count}
    versions = {h["http_version"] for h in seen(server)["held"].values()}
    assert versions == {"2" if server.transport == "h2" else "1.1"}
    wait_for(lambda: not any(h["open"] for h in seen(server)["held"].values()),
             what="the app to see every stream's end")


def test_fetch_reads_a_streamed_response_piece_by_piece(browsed):
    _, s = browsed
    assert s["browser"]["stream"] == {"status": 200, "pieces": ["first", "second"]}


def test_an_upload_from_the_browser_arrives_whole_in_pieces(browsed):
    server, s = browsed
    assert s["browser"]["upload"] == {"status": 200, "sameDigest": True, "size": 3 << 20}
    assert seen(server)["upload_pieces"] > 1
