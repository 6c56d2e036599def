"""An app that starts a job scheduler at import, but not in the configuration check's process."""
import os

_where = "check" if os.environ.get("NGX_WSGI_CONFIG_CHECK") == "1" else "worker"
with open(os.path.join(os.environ["NGX_WSGI_TEST_MARKS"], "imports"), "a") as _f:
    _f.write(f"{_where}\n")


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{_where} {os.environ.get('NGX_WSGI_CONFIG_CHECK')}".encode()]
