"""The publish route: POST /api/notify and POST /api/notify/batch, on the event loop; and
POST /api/tokens the same way (api/tokens.py's rules).

Through Django, a request hops to a thread several times (request_started, the sync view,
`response.close()`), looks its API key up in the database, validates with DRF's field
machinery, and the view then calls back into the event loop to publish (DESIGN §8): about
300 requests/s per process here. This door takes the same requests to the same core without
leaving the loop: it reads the body, finds the key and counts its rate window in one Redis
round trip with the process's key cache (api/keys.py), and hands the call to the notify core
(api/publishing.py), which applies every rule. Refusals are answered by api/exceptions.py's
handler, with the status and headers (WWW-Authenticate, Retry-After) DRF would send.

The DRF views (api/views.py) are the other door to the same core: they serve Django's test
client and define the OpenAPI schema; other methods on these paths answer 405 there.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from rest_framework import exceptions

from realtime.events import dumps
from realtime.scope import header

from . import tokens
from .authentication import bearer_key
from .exceptions import InvalidApiKey, exception_handler, payload_too_large
from .keys import KeyCache
from .models import hash_key
from .publishing import NotifyCall, answer, cost_of

logger = logging.getLogger(__name__)

ASGIApp = Any
NOTIFY, BATCH, TOKENS = "/api/notify", "/api/notify/batch", "/api/tokens"
JSON_HEADERS = [(b"content-type", b"application/json")]
# Bodies above this are parsed only once the key is known to be good (one more Redis call).
CHECK_KEY_BEFORE_PARSING_BYTES = 256 * 1024


class FastPublishApp:
    """ASGI: POST /api/notify, /api/notify/batch and /api/tokens here; the rest to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.keys = KeyCache()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path") if scope["type"] == "http" and scope["method"] == "POST" else None
        if path not in (NOTIFY, BATCH, TOKENS):
            await self.app(scope, receive, send)
            return
        read = await _read_body(receive)
        if read is None:
            return  # the client went away
        try:
            if path == TOKENS:
                status, content = 201, await self.mint(scope, *read)
            else:
                status, content = 202, await answer(await self.call(path == BATCH, scope, *read))
            headers: list[tuple[bytes, bytes]] = []
        except Exception as exc:  # noqa: BLE001 - every refusal is answered as the DRF views answer it
            status, content, headers = error_answer(exc)
        await send_json(send, status, content, headers)

    async def call(self, batch: bool, scope: dict[str, Any], body: bytes, too_large: bool) -> NotifyCall:
        """The request as the core takes it: its key and rate window (one Redis round trip) and body."""
        key_hash = hash_key(_bearer_key(scope))
        if not too_large and len(body) > CHECK_KEY_BEFORE_PARSING_BYTES:
            # Parsing megabytes holds the event loop: never do it for an unknown key.
            if (await self.keys.check(key_hash, 0)).key is None:
                raise InvalidApiKey("unknown or revoked API key")
        parsed, parse_error = _parse(body, too_large)
        checked = await self.keys.check(key_hash, cost_of(batch, parsed))
        return NotifyCall(batch, checked.key, parsed, parse_error, checked.window)

    async def mint(self, scope: dict[str, Any], body: bytes, too_large: bool) -> dict[str, Any]:
        """POST /api/tokens: the key from the cache (one Redis round trip, which also tells
        of revoked keys), then api/tokens.py's rules."""
        key = await self.keys.find(hash_key(_bearer_key(scope)))
        if key is None:
            raise InvalidApiKey("unknown or revoked API key")
        parsed, parse_error = _parse(body, too_large)
        return tokens.mint(key, parsed, parse_error)


def _bearer_key(scope: dict[str, Any]) -> str:
    key = bearer_key(header(scope, b"authorization") or "")
    if key is None:
        error = exceptions.NotAuthenticated()
        error.auth_header = "Bearer"  # type: ignore[attr-defined]
        raise error
    return key


def _parse(body: bytes, too_large: bool) -> tuple[Any, exceptions.APIException | None]:
    """The JSON body, or the error to answer once the key is known to be good."""
    if too_large:
        return None, payload_too_large()
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, exceptions.ParseError(f"JSON parse error - {exc}")
    except RecursionError:
        return None, exceptions.ParseError("JSON parse error - nested too deeply")


async def send_json(send: Any, status: int, content: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An ASGI JSON response."""
    body = dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_answer(exc: Exception) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    """The status, body and headers the DRF views would answer `exc` with."""
    if isinstance(exc, exceptions.AuthenticationFailed | exceptions.NotAuthenticated):
        exc.auth_header = "Bearer"  # type: ignore[union-attr]  # as APIView.handle_exception sets it
    response = exception_handler(exc, {})
    assert response is not None
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.items()
        if name.lower() in ("www-authenticate", "retry-after")
    ]
    return response.status_code, response.data, headers


async def _read_body(receive: Any) -> tuple[bytes, bool] | None:
    """(body, whether it is over DATA_UPLOAD_MAX_MEMORY_SIZE, Django's limit: then it is not
    kept), or None if the client went away."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is None or size <= limit:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if limit is not None and size > limit:
        return b"", True
    return b"".join(chunks), False
