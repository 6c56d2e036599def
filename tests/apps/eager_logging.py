"""Logging configured at import by a bare basicConfig(), as Plone's diazo package does: a
handler to standard error on the root logger."""
import logging
import warnings

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("eager")


def application(environ, start_response):
    log.info("an info line")
    log.warning("a warning")
    warnings.warn("a library's warning", UserWarning)
    try:
        raise ValueError("broken on purpose")
    except ValueError:
        log.exception("a failure with its traceback")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"logged"]
