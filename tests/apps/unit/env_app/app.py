"""Reports its environment and process settings; /sleep outlasts the request timeout."""
import json
import os
import time


def application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(30)
    body = json.dumps({
        "greeting": os.environ.get("GREETING"),
        "mode": os.environ.get("APP_MODE"),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
