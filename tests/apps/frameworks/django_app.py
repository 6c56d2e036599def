"""A whole Django project in one file."""
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="differential-test",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    USE_TZ=True,
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def index(request):
    return HttpResponse("Hello from Django")


def hello(request, name):
    return JsonResponse({"name": name, "q": request.GET.get("q"), "path": request.path,
                         "url": request.build_absolute_uri(), "secure": request.is_secure()})


def echo(request):
    return JsonResponse({"post": request.POST.dict(), "body": request.body.decode(),
                         "content_type": request.content_type})


def go(request):
    return HttpResponseRedirect("/hello/there/")


def cookies(request):
    resp = HttpResponse("cookies set")
    resp.set_cookie("a", "1")
    resp.set_cookie("b", "2", httponly=True)
    return resp


def teapot(request):
    return HttpResponse("I'm a teapot", status=418)


def stream(request):
    return StreamingHttpResponse((f"{i} {request.path}\n" for i in range(5)), content_type="text/plain")


urlpatterns = [
    path("", index),
    path("hello/<str:name>/", hello),
    path("echo/", echo),
    path("redirect/", go),
    path("cookies/", cookies),
    path("teapot/", teapot),
    path("stream/", stream),
]

application = get_wsgi_application()
