"""A Django project in one file, served through Django's ASGI handler, with async and sync views,
for the differential test against uvicorn."""
import asyncio

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="asgi-differential-test",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    USE_TZ=True,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import (  # noqa: E402
    FileResponse,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


async def index(request):
    return HttpResponse("Hello from async Django")


def sync_view(request):
    # Django runs sync views in a thread (asgiref's sync_to_async): the loop stays free.
    return JsonResponse({"sync": True, "method": request.method, "path": request.path})


async def hello(request, name):
    return JsonResponse({"name": name, "q": request.GET.get("q"), "path": request.path,
                         "path_info": request.path_info, "script_name": request.META.get("SCRIPT_NAME"),
                         "url": request.build_absolute_uri(), "secure": request.is_secure(),
                         "host": request.get_host()})


@csrf_exempt
async def echo(request):
    return JsonResponse({"post": request.POST.dict(), "length": len(request.body),
                         "start": request.body[:32].decode("latin-1"), "content_type": request.content_type,
                         "method": request.method})


async def form(request):
    # A multipart form's fields and files (its body is the parser's, then: not request.body).
    return JsonResponse({"post": request.POST.dict(), "files": {k: f.read().decode() for k, f in request.FILES.items()}})


async def go(request):
    return HttpResponseRedirect("/hello/there/")


async def cookies(request):
    response = JsonResponse(dict(request.COOKIES))
    response.set_cookie("a", "1")
    response.set_cookie("b", "2", httponly=True)
    return response


async def teapot(request):
    return HttpResponse("I'm a teapot", status=418)


async def stream(request):
    async def pieces():
        for i in range(5):
            await asyncio.sleep(0)
            yield f"{i} {request.path}\n"
    return StreamingHttpResponse(pieces(), content_type="text/plain")


def sync_stream(request):
    return StreamingHttpResponse((f"sync {i}\n" for i in range(3)), content_type="text/plain")


async def headers(request):
    return JsonResponse({"x_token": request.headers.get("X-Token"), "ua": request.META.get("HTTP_USER_AGENT"),
                         "remote_addr_set": bool(request.META.get("REMOTE_ADDR")),
                         "server_port_set": bool(request.META.get("SERVER_PORT"))})


def file(request):
    return FileResponse(open(__file__, "rb"), content_type="text/x-python")


async def empty(request):
    return HttpResponse(status=204)


async def raises(request):
    raise LookupError("the differential test's deliberate failure")


urlpatterns = [
    path("", index),
    path("sync/", sync_view),
    path("hello/<str:name>/", hello),
    path("echo/", echo),
    path("form/", form),
    path("redirect/", go),
    path("cookies/", cookies),
    path("teapot/", teapot),
    path("stream/", stream),
    path("sync-stream/", sync_stream),
    path("headers/", headers),
    path("file/", file),
    path("empty/", empty),
    path("raises/", raises),
]

application = get_asgi_application()
