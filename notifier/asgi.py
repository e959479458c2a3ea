"""ASGI entry point: HTTP through Django (with /healthz, /readyz and /metrics answered before
it, so a probe on 127.0.0.1 needs no ALLOWED_HOSTS entry, and /sse/ through the event-stream
app), WebSocket through the notifier consumer."""

from __future__ import annotations

import gc
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifier.settings")
django_http = get_asgi_application()  # sets Django up before the consumers are imported

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from api.fast import FastPublishApp  # noqa: E402
from api.fast_inbox import FastInboxApp  # noqa: E402
from api.health import OperationsApp  # noqa: E402
from realtime import scheduling  # noqa: E402
from realtime.conf import gc_thresholds, notifier_settings  # noqa: E402
from realtime.origin import OriginMiddleware  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402
from realtime.session import SessionAuthMiddleware  # noqa: E402
from realtime.sse import ServerSentEventsApp  # noqa: E402

thresholds = gc_thresholds(notifier_settings.GC_THRESHOLDS)
if thresholds:  # a server process: see realtime/conf.py
    gc.set_threshold(*thresholds)

django_app = ASGIStaticFilesHandler(django_http) if settings.SERVE_STATIC else django_http
http_app = URLRouter(
    [
        path("sse/", SessionAuthMiddleware(ServerSentEventsApp())),
        re_path(r"", django_app),  # type: ignore[arg-type]  # an ASGI app, as Channels routes them
    ]
)

router = ProtocolTypeRouter(
    {
        # GET /healthz, /readyz, /metrics: api/health.py; POST /api/notify(/batch): api/fast.py;
        # GET /api/inbox(/counts) with a token: api/fast_inbox.py; the rest: Django.
        "http": OperationsApp(FastPublishApp(FastInboxApp(http_app))),
        "websocket": OriginMiddleware(SessionAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The router. In the embedded mode, which has no Celery beat, the first call also starts
    this process's dispatch of scheduled events, on the server's loop."""
    if notifier_settings.embedded and notifier_settings.DISPATCH_IN_SERVER:
        scheduling.start_local_dispatcher()  # once
    await router(scope, receive, send)
