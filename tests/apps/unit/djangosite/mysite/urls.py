from django.conf import settings
from django.http import JsonResponse
from django.urls import path


def where(request, rest=""):
    return JsonResponse({
        "path": request.path,
        "script_name": request.META.get("SCRIPT_NAME"),
        "path_info": request.path_info,
        "method": request.method,
        "site": settings.SITE_NAME,
        "body": request.body.decode(),
    })


urlpatterns = [path("", where), path("<path:rest>", where)]
