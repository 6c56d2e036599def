"""WebSocket echo (raw ASGI 3) for the Autobahn conformance run: every text message comes back as
text, every binary one as binary, until the client closes."""


async def app(scope, receive, send):
    if scope["type"] != "websocket":
        if scope["type"] == "lifespan":
            raise ValueError("no lifespan")
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
