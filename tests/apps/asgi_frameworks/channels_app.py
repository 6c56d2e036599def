"""A Django Channels project in one file: async and sync WebSocket consumers, a group chat over
the in-memory channel layer, a consumer that refuses and one that closes with its own code, a
streaming HTTP consumer, and Django's own views behind the same router."""
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="channels-test",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    USE_TZ=True,
)
django.setup()

from channels.generic.http import AsyncHttpConsumer  # noqa: E402
from channels.generic.websocket import (  # noqa: E402
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path, re_path  # noqa: E402


class Echo(AsyncWebsocketConsumer):
    async def connect(self):
        subprotocols = self.scope.get("subprotocols") or []
        await self.accept(subprotocol=subprotocols[0] if subprotocols else None)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "scope":
            await self.send(text_data=repr(sorted((k, str(v)) for k, v in self.scope.items()
                                                  if k in ("type", "path", "scheme", "query_string"))))
        elif text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)


class Room(AsyncJsonWebsocketConsumer):
    """Every message goes to everyone in the room (the in-memory layer: one process)."""

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()
        await self.send_json({"joined": self.room})

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content):
        await self.channel_layer.group_send(self.room, {"type": "room.message", "text": content["text"]})

    async def room_message(self, event):
        await self.send_json({"room": self.room, "text": event["text"]})


class Counter(JsonWebsocketConsumer):
    """A sync consumer: Channels runs it in a worker thread (async_to_sync)."""

    def connect(self):
        self.count = 0
        self.accept()

    def receive_json(self, content):
        self.count += 1
        self.send_json({"count": self.count, "echo": content})


class Refuses(AsyncWebsocketConsumer):
    async def connect(self):
        await self.close()


class Closes(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data="bye")
        await self.close(code=4002)


class Lines(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_headers(headers=[(b"Content-Type", b"text/plain")])
        for i in range(3):
            await self.send_body(f"line {i}\n".encode(), more_body=True)
        await self.send_body(b"", more_body=False)


def info(request):
    return JsonResponse({"path": request.path, "method": request.method, "q": request.GET.get("q")})


urlpatterns = [path("info", info)]

application = ProtocolTypeRouter({
    "http": URLRouter([path("lines", Lines.as_asgi()), re_path(r"", get_asgi_application())]),
    "websocket": URLRouter([
        path("ws/echo", Echo.as_asgi()),
        path("ws/room/<str:room>", Room.as_asgi()),
        path("ws/counter", Counter.as_asgi()),
        path("ws/refuses", Refuses.as_asgi()),
        path("ws/closes", Closes.as_asgi()),
    ]),
})
