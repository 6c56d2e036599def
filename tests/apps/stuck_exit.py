"""Exits that never end by themselves: an atexit handler that waits for ever (?atexit), one
that waits for the stuck job of a global ThreadPoolExecutor (?executor), or a thread that holds
the GIL in C code for ever (?gil: a C library call made without letting the GIL go)."""
import atexit
import concurrent.futures
import ctypes
import logging
import threading
import time


def _hold_the_gil():
    time.sleep(0.5)  # the response has gone by then
    logging.getLogger("stuck").warning("holding the GIL from now on")
    ctypes.PyDLL(None).sleep(3600)

STUCK = threading.Event()
EXECUTORS = []


def application(environ, start_response):
    if environ["QUERY_STRING"] == "gil":
        threading.Thread(target=_hold_the_gil, daemon=True).start()
    elif environ["QUERY_STRING"] == "executor":
        executor = concurrent.futures.ThreadPoolExecutor(1)
        executor.submit(STUCK.wait)
        EXECUTORS.append(executor)
        atexit.register(executor.shutdown, wait=True)
    else:
        atexit.register(STUCK.wait)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"registered"]
