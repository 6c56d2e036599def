"""Records its import and its interpreter's end in files; starts threads of both kinds."""
import atexit
import os
import threading
import time

MARKS = os.environ.get("NGX_WSGI_TEST_MARKS") or os.path.join(os.path.dirname(__file__), ".marks")
os.makedirs(MARKS, exist_ok=True)
with open(os.path.join(MARKS, f"imported-{os.getpid()}"), "a") as f:
    f.write(f"{time.time()}\n")


def _mark_exit():
    with open(os.path.join(MARKS, f"finalized-{os.getpid()}"), "w") as f:
        f.write("ok")


atexit.register(_mark_exit)


def _daemon():
    while True:
        time.sleep(0.05)


def _worker():
    time.sleep(0.3)


threading.Thread(target=_daemon, daemon=True).start()
threading.Thread(target=_worker).start()


def application(environ, start_response):
    threading.Thread(target=_worker).start()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
