# A mod_wsgi script: a Python file whose name does not end in .py, and whose stem (`site`)
# is a module of Python's own, which it must not replace.
import sys


def application(environ, start_response):
    stdlib_site = sys.modules["site"]
    body = f"{__name__} {hasattr(stdlib_site, 'getsitepackages')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
