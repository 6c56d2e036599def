"""Endless responses of 1-byte pieces (an event stream's or a token-by-token answer's, at their
smallest), WSGI (`application`) and ASGI (`app`), until the client goes."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    while True:
        yield b"x"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    while True:
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
