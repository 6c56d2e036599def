"""Logging configured at import to standard output, which may be elsewhere than the server's
log (a journal): left as the app made it."""
import logging
import sys

logging.basicConfig(level=logging.INFO, stream=sys.stdout)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [" ".join(type(h).__name__ for h in logging.root.handlers).encode()]
