"""Stands in for NetBox's netbox/wsgi.py (a Django WSGI application) in NetBox's own layout:
/opt/netbox/netbox/netbox/wsgi.py, static files in /opt/netbox/netbox/static/."""
import json


def application(environ, start_response):
    body = json.dumps({"remote_addr": environ["REMOTE_ADDR"], "scheme": environ["wsgi.url_scheme"],
                       "forwarded_proto": environ.get("HTTP_X_FORWARDED_PROTO"),
                       "path": environ["PATH_INFO"],
                       "length": len(environ["wsgi.input"].read())}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
