"""An app whose import takes two seconds (a large framework, a model loaded at import). With
NGX_WSGI_TEST_MARKS set, it marks when a process begins importing it."""
import os
import time

if os.environ.get("NGX_WSGI_TEST_MARKS"):
    open(os.path.join(os.environ["NGX_WSGI_TEST_MARKS"], f"importing-{os.getpid()}"), "w").close()
time.sleep(3)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"imported by %d" % os.getpid()]
