"""An object whose finaliser takes 2 s (a large app's teardown: NetBox's takes 3 to 6 s on a
loaded machine), run by Python's teardown at the worker's exit, after the atexit handlers; it
marks NGX_WSGI_TEST_MARKS/teardown-PID when done. ?clear clears the atexit handlers."""
import os
import time


class _ClosedAtTeardown:
    def __del__(self):
        time.sleep(2)
        # Builtins (open) may be gone by then, as in any Python's teardown.
        mark = os.path.join(os.environ["NGX_WSGI_TEST_MARKS"], f"teardown-{os.getpid()}")
        os.close(os.open(mark, os.O_CREAT | os.O_WRONLY))


_KEPT = _ClosedAtTeardown()


def application(environ, start_response):
    if environ["QUERY_STRING"] == "clear":
        import atexit
        atexit._clear()  # every handler, the server's too
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]
