"""An app whose import takes three seconds (a large framework, a model loaded at import). With
NGX_WSGI_TEST_MARKS set, it marks when a process begins importing it; with
NGX_WSGI_TEST_IMPORT_TICKS set, a thread of its own logs every half second while it imports."""
import logging
import os
import threading
import time

if os.environ.get("NGX_WSGI_TEST_MARKS"):
    open(os.path.join(os.environ["NGX_WSGI_TEST_MARKS"], f"importing-{os.getpid()}"), "w").close()
_imported = threading.Event()
if os.environ.get("NGX_WSGI_TEST_IMPORT_TICKS"):
    def _tick():
        n = 0
        while not _imported.wait(0.5):
            n += 1
            logging.getLogger("ticker").warning("importing, tick %d", n)
    threading.Thread(target=_tick, name="ticker", daemon=True).start()
time.sleep(3)
_imported.set()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"imported by %d" % os.getpid()]
