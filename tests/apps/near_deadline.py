"""Requests that end right about their 100 ms deadline (/slow spins 85 to 115 ms in Python), and
requests that do nothing (/fast): an interrupt meant for a slow one must never reach a fast one."""
import random
import time


def spin():
    until = time.monotonic() + random.uniform(0.085, 0.115)
    while time.monotonic() < until:
        pass


def application(environ, start_response):
    if environ["PATH_INFO"].endswith("/slow"):
        spin()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"].endswith("/slow"):
        spin()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})
