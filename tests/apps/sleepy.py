"""/slow sleeps 2 s in Python, /forever an hour; everything else answers at once."""
import time


def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(2)
    if environ["PATH_INFO"] == "/forever":
        time.sleep(3600)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]
