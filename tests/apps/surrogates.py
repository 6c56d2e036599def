"""Text with a lone surrogate (a file name that is not UTF-8, as os.listdir gives it) printed,
written to wsgi.errors and logged."""
import logging
import os
import sys


def application(environ, start_response):
    name = os.fsdecode(b"caf\xe9.txt")
    print("print:", name)
    print("stderr:", name, file=sys.stderr)
    environ["wsgi.errors"].write(f"wsgi.errors: {name}\n")
    logging.getLogger("app").warning("logging: could not find %s", name)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{sys.stdout.errors} {sys.stderr.errors}".encode()]
