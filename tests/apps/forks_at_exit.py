"""At exit, opens a file (the lowest free descriptor: 3 in the configuration check, once its
report is written) and forks a child that writes to it, as an app's cleanup might."""
import atexit
import os

MARKS = os.environ["NGX_WSGI_TEST_MARKS"]


def _cleanup():
    with open(f"{MARKS}/written-at-exit-{os.getpid()}", "w") as f:
        pid = os.fork()
        if pid == 0:
            try:
                f.write(f"descriptor {f.fileno()}: written by the fork")
                f.flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


atexit.register(_cleanup)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
