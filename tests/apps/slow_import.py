"""An app whose import takes two seconds (a large framework, a model loaded at import)."""
import time

time.sleep(2)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"imported"]
