"""Stands in for an app written for `gunicorn -k gevent`: gevent's monkey module says threading
is patched (a stub: the real patch_all() needs gevent installed)."""
import sys
import types

monkey = types.ModuleType("gevent.monkey")
monkey.is_module_patched = lambda name: name == "threading"
sys.modules["gevent.monkey"] = monkey


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]
