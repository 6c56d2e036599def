"""Starts, while being imported, two processes meant to live on: a bare fork and a non-daemon
multiprocessing.Process (each sleeping an hour, writing its pid to $NGX_WSGI_TEST_MARKS first).
The configuration check must neither wait for them nor leave them running."""
import multiprocessing
import os
import time

MARKS = os.environ["NGX_WSGI_TEST_MARKS"]


def live_on(kind):
    with open(f"{MARKS}/{kind}-{os.getpid()}-of-{os.getppid()}", "w"):
        pass
    time.sleep(3600)


if os.fork() == 0:
    try:
        live_on("forked")
    finally:
        os._exit(0)
multiprocessing.get_context("fork").Process(target=live_on, args=("process",), daemon=False).start()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]
