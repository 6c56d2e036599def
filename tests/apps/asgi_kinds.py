"""Callables of several ASGI kinds, for the configuration check."""


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"asgi3"})


class asgi2_class:
    """ASGI 2: instantiated with the scope."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        pass


def asgi2_function(scope):
    async def connection(receive, send):
        pass
    return connection


def two_arguments(scope, receive):
    pass


not_callable = 42
