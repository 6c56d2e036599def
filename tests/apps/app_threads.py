"""Starts non-daemon threads of its own, the way apps start metrics pushers, schedulers and queue
consumers: at import, (?polite) one that ends by itself once the interpreter begins to stop,
and (?late-log) one that logs while the worker waits for it at exit, when the test says so;
(?slow-atexit) registers an atexit handler that waits a minute."""
import atexit
import logging
import os
import threading
import time

MARKS = os.environ.get("NGX_WSGI_TEST_MARKS") or os.path.join(os.path.dirname(__file__), ".marks")
os.makedirs(MARKS, exist_ok=True)
with open(os.path.join(MARKS, f"imported-{os.getpid()}"), "a") as f:
    f.write(f"{time.time()}\n")

_stop = threading.Event()


def _mark(name):
    with open(os.path.join(MARKS, f"{name}-{os.getpid()}"), "w") as f:
        f.write("ok")


atexit.register(_mark, "atexit")


def _push_forever():
    while True:
        time.sleep(0.05)


def _polite():
    # Ends on its own a little after the request that started it.
    _stop.wait(0.5)
    _mark("polite-done")


def _wait_at_exit():
    # A clean-up that waits on something gone, saying first that it runs.
    _mark("atexit-waiting")
    time.sleep(60)


def _late_logger():
    # Waits for the test's go (the worker is exiting by then), logs, and ends.
    go = os.path.join(MARKS, f"go-{os.getpid()}")
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    logging.getLogger("late").warning("the late thread logs while the worker waits for it")


_started = False
_lock = threading.Lock()


def application(environ, start_response):
    global _started
    with _lock:
        if environ["QUERY_STRING"] == "polite":
            threading.Thread(target=_polite, name="polite", daemon=False).start()
        elif environ["QUERY_STRING"] == "slow-atexit":
            atexit.register(_wait_at_exit)
        elif environ["QUERY_STRING"] == "late-log":
            threading.Thread(target=_late_logger, name="late-logger", daemon=False).start()
        elif not _started:
            _started = True
            threading.Thread(target=_push_forever, name="metrics-pusher", daemon=False).start()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"threads started"]
