from __future__ import annotations

from typing import Any

from django.urls import path, re_path

from .consumers import NotifierConsumer


async def no_such_endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A WebSocket to any other path is refused at the handshake (HTTP 403), not with a 500."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


websocket_urlpatterns = [
    path("ws/", NotifierConsumer.as_asgi()),
    re_path(r"", no_such_endpoint),  # type: ignore[arg-type]  # an ASGI app, as Channels' routes are
]
