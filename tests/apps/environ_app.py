"""Answers with its environ as JSON (strings as they are, other values by type)."""
import json


def application(environ, start_response):
    out = {}
    for key, value in environ.items():
        if isinstance(value, (str, bool, int)):
            out[key] = value
        elif isinstance(value, tuple):
            out[key] = list(value)
    out["types"] = {key: type(value).__name__ for key, value in environ.items()}
    out["errors_writable"] = callable(getattr(environ["wsgi.errors"], "write", None))
    out["file_wrapper_callable"] = callable(environ.get("wsgi.file_wrapper"))
    out["body"] = environ["wsgi.input"].read().decode("latin-1")
    data = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
