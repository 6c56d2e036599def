"""Logging configured after the import, as a create_app() or a first request does it."""
import logging
import sys


def refused_then_warns(environ, start_response):
    try:
        logging.basicConfig(stream=sys.stderr, filename="/nonexistent/app.log")
    except ValueError:
        pass
    logging.getLogger("myapp").warning("after a refused basicConfig")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"warned"]


def configures_then_logs(environ, start_response):
    logging.basicConfig(level=logging.DEBUG, format="lazy %(levelname)s %(name)s: %(message)s")
    logging.getLogger("myapp").info("seen at info after a lazy basicConfig")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"configured"]
