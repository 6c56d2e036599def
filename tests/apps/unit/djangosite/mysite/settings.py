"""Settings of a Django project as NGINX Unit's Django how-to lays it out (module mysite.wsgi)."""
import os

SECRET_KEY = "from-unit-test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "mysite.urls"
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
USE_TZ = True
STATIC_URL = "static/"
# Set by Unit's "environment" (nginx's `env` after the translation).
SITE_NAME = os.environ.get("SITE_NAME", "unset")
