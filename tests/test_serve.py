"""`ngx-wsgi serve`: one command serves an app through the built nginx; --reload follows edits."""
import os
import signal
import socket
import subprocess
import time

import requests

from conftest import BUILD_DIR, free_port

APP = '''
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"VERSION"]
'''


def wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.1)
    return False


def test_serve_with_reload_follows_edits(built, tmp_path):
    app = tmp_path / "site" / "app.py"
    app.parent.mkdir()
    app.write_text(APP.replace("VERSION", "v1"))
    port = free_port()
    proc = subprocess.Popen([str(BUILD_DIR / "ngx-wsgi"), "serve", str(app), "--port", str(port),
                             "--reload"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert wait_for(lambda: requests.get(url, timeout=2).text == "v1"), "serve did not come up"
        app.write_text(APP.replace("VERSION", "v2"))
        assert wait_for(lambda: requests.get(url, timeout=2).text == "v2"), "edit not picked up"
        app.write_text("def application(environ, start_response)\n")  # a syntax error
        time.sleep(2)
        assert requests.get(url, timeout=2).text == "v2", "a broken edit is refused; v2 keeps serving"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5), timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    assert "changed; reloading" in err and "SyntaxError" in err
