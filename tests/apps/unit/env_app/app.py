"""Reports its environment and process settings; /sleep outlasts the request timeout (in short
sleeps, so that the timeout's interrupt ends it: one long sleep in C would hold the worker's
exit until it returned)."""
import json
import os
import time


def application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        for _ in range(300):
            time.sleep(0.1)
    body = json.dumps({
        "greeting": os.environ.get("GREETING"),
        "mode": os.environ.get("APP_MODE"),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
