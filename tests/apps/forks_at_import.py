"""Starts, while being imported, processes meant to live on: a bare fork, a non-daemon
multiprocessing.Process, a program in a session of its own, and a double-forked daemon (each
sleeping an hour, its pid written to $NGX_WSGI_TEST_MARKS). The configuration check must neither
wait for them nor leave them running."""
import multiprocessing
import os
import subprocess
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
session = subprocess.Popen(["sleep", "3600"], start_new_session=True)
with open(f"{MARKS}/session-{session.pid}-of-{os.getpid()}", "w"):
    pass
if os.fork() == 0:
    try:
        os.setsid()
        if os.fork() == 0:
            live_on("daemon")
    finally:
        os._exit(0)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]
