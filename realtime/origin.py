"""Origin validation for WebSocket handshakes.

A browser always sends `Origin`; it must be the service's own host (and that host one of
DJANGO_ALLOWED_HOSTS) or one listed in NOTIFIER["ALLOWED_ORIGINS"]. Servers and scripts send
none and are allowed (DESIGN §5), which Channels' OriginValidator does not allow, hence this
small middleware.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from .codes import CloseCode
from .conf import notifier_settings
from .scope import header


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """True if a handshake with this Origin (None: no header) may connect to `host`."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    if not host or parts.scheme not in {"http", "https"} or parts.netloc.lower() != host.lower():
        return False
    # Same origin, and the host must be one of ours: a page on a name an attacker points at
    # this server (DNS rebinding) is same-origin with itself, not with us.
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


class OriginMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            origin = header(scope, b"origin")
            host = header(scope, b"host")
            if not origin_allowed(origin, host, list(notifier_settings.ALLOWED_ORIGINS)):
                # Accept, then close with the terminal 4501: a refused handshake (HTTP 403) looks
                # like a network failure (1006) to a browser, which would reconnect forever.
                await receive()  # websocket.connect
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": int(CloseCode.FORBIDDEN)})
                return None
        return await self.app(scope, receive, send)
