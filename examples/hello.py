"""The smallest WSGI app: `ngx-wsgi serve examples/hello.py` serves it through nginx."""


def application(environ, start_response):
    name = environ.get("QUERY_STRING") or "world"
    body = f"Hello, {name}! (served by nginx, {environ['SERVER_PROTOCOL']})\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [body]
