"""A python-socketio server (its ASGI app): connect with auth, an acknowledged event, rooms
whose messages reach every member, whichever transport each uses (long-polling or WebSocket)."""
import socketio

# A held long-poll is answered within a second (Engine.IO's default is 25 s): a polling client's
# disconnect waits for it, and so does nginx's graceful stop.
sio = socketio.AsyncServer(async_mode="asgi", ping_interval=1, ping_timeout=5)


@sio.event
async def connect(sid, environ, auth):
    if not auth or auth.get("token") != "let-me-in":
        return False            # refused: the client's connect fails
    await sio.emit("welcome", {"sid": sid}, to=sid)


@sio.event
async def echo(sid, data):
    return {"echo": data}


@sio.event
async def join(sid, room):
    await sio.enter_room(sid, room)
    return room


@sio.event
async def say(sid, data):
    await sio.emit("said", {"text": data["text"], "from": sid}, room=data["room"])


app = socketio.ASGIApp(sio, socketio_path="socket.io")
