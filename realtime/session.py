"""Django session authentication for WebSockets, paid for only by handshakes that carry a session.

Channels' AuthMiddlewareStack loads the session and user in a thread for every connection; most
connections (token or anonymous) have no session cookie, so they skip it.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from django.conf import settings


def _has_session_cookie(scope: dict[str, Any]) -> bool:
    name = settings.SESSION_COOKIE_NAME.encode()
    return any(key.lower() == b"cookie" and name in value for key, value in scope.get("headers", []))


class SessionAuthMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.with_session = AuthMiddlewareStack(app)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if _has_session_cookie(scope):
            return await self.with_session(scope, receive, send)
        return await self.app(scope, receive, send)
