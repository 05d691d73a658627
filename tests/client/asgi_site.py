"""A Django site served by uvicorn in tests/client/test_asgi.py: async views doing the
verification-code flow of the README's Django section (a 6-digit code kept 30 s in the cache,
checked once on POST) on ``RingCache``'s async API. The LOCATION comes from the environment
(``RINGCACHE_TEST_LOCATION``); the site listens where the test tells uvicorn to, on 127.0.0.1."""

from __future__ import annotations

import os
import secrets

from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="tests-only",
    USE_TZ=True,
    MIDDLEWARE=[],
    CACHES={
        "default": {
            "BACKEND": "ringcache.client.django.RingCache",
            "LOCATION": os.environ["RINGCACHE_TEST_LOCATION"],
            "OPTIONS": {"connect_timeout": 0.3, "timeout": 0.3, "probe_interval": 0.1},
        }
    },
)

import django  # noqa: E402

django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


async def send_code(request: HttpRequest, user: str) -> HttpResponse:
    code = f"{secrets.randbelow(10**6):06d}"
    await cache.aset(f"code:{user}", code, 30)
    return HttpResponse(code)  # the test plays the user's phone


async def check_code(request: HttpRequest, user: str) -> HttpResponse:
    stored = await cache.aget(f"code:{user}")
    if stored is not None and stored == request.body.decode():
        await cache.adelete(f"code:{user}")
        return HttpResponse("ok")
    return HttpResponse("wrong or expired code", status=403)


urlpatterns = [path("code/<str:user>", send_code), path("check/<str:user>", check_code)]
application = get_asgi_application()
