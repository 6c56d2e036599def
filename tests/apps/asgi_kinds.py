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


class _Framework:
    """An ASGI framework's application object (Starlette's, Quart's): its __call__ is async."""

    async def __call__(self, scope, receive, send):
        await app(scope, receive, send)


framework_instance = _Framework()
