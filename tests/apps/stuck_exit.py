"""Exits that never end by themselves: an atexit handler that waits for ever (?atexit), or one
that waits for the stuck job of a global ThreadPoolExecutor (?executor)."""
import atexit
import concurrent.futures
import threading

STUCK = threading.Event()
EXECUTORS = []


def application(environ, start_response):
    if environ["QUERY_STRING"] == "executor":
        executor = concurrent.futures.ThreadPoolExecutor(1)
        executor.submit(STUCK.wait)
        EXECUTORS.append(executor)
        atexit.register(executor.shutdown, wait=True)
    else:
        atexit.register(STUCK.wait)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"registered"]
