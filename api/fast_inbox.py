"""The inbox's reads on the event loop: GET /api/inbox and GET /api/inbox/counts with a
connection token.

Through Django, such a request made 16 thread hops (each sync middleware, then the DRF view)
around a query of under a millisecond (docs/benchmarks.md, "The inbox, first cut"). This door
answers the same requests with the same rules (the token parsed by `api.inbox.token_user`, the
query by `api.inbox.list_query`, the rows read by `realtime.inbox`) in one hop to a database
thread. Requests it does not take go on to Django: other methods, and the Django session (no
`Authorization` header), whose lookup and CSRF rules are Django's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from realtime import inbox
from realtime.scope import header

from .fast import error_answer, send_json
from .inbox import list_query, page_answer, token_user

ASGIApp = Any
LIST, COUNTS = "/api/inbox", "/api/inbox/counts"


class FastInboxApp:
    """ASGI: GET /api/inbox(/counts) with `Authorization: Bearer` here; the rest to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path") if scope["type"] == "http" and scope["method"] == "GET" else None
        authorization = header(scope, b"authorization") if path in (LIST, COUNTS) else None
        if not authorization:
            await self.app(scope, receive, send)
            return
        try:
            status, content = 200, await self.answer(path == COUNTS, authorization, scope)
            headers: list[tuple[bytes, bytes]] = []
        except Exception as exc:  # noqa: BLE001 - every refusal is answered as the DRF views answer it
            status, content, headers = error_answer(exc)
        await send_json(send, status, content, headers)

    async def answer(self, counts: bool, authorization: str, scope: dict[str, Any]) -> Any:
        user = token_user(authorization)
        if counts:
            return (await inbox.acounts_of([user]))[user]
        query = scope.get("query_string", b"").decode("latin-1")
        attrs = list_query(dict(parse_qsl(query, keep_blank_values=True)))
        found = await inbox.apage(user, attrs.get("status"), attrs.get("category"), attrs["limit"], attrs.get("cursor"))
        return page_answer(found)
