"""The hot publish route: POST /api/notify and POST /api/notify/batch, on the event loop.

Through Django, a request hops to a thread several times (request_started, the sync view,
`response.close()`), looks its API key up in the database, counts its rate in Django's cache
with blocking Redis calls, validates with DRF's field machinery, and the view then calls back
into the event loop to publish (DESIGN §8): about 300 requests/s per process here. This route
answers the same requests, with the same rules and the same answers, without leaving the loop:

1. the API key and its rate window come from one Redis round trip and the process's key
   cache (api/keys.py), which forgets every key as soon as any key changes;
2. the body is validated by `quick_notify_attrs` for ordinary events, and by the very same
   DRF serializers for anything else (so every error is worded by DRF, as on other endpoints);
3. `apublish` (or for a batch `apublish_many`: one history round trip and one send);
4. errors are `APIException`s answered by api/exceptions.py's handler: `{"code", "message",
   "details"}` with the status and headers (WWW-Authenticate, Retry-After) DRF would send.

The DRF views (NotifyView, NotifyBatchView) stay the API's definition: they serve the OpenAPI
schema, the embedded mode (no Redis: keys from the database) and any request this route does
not take (other methods answer 405 there).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from rest_framework import exceptions

from realtime.conf import notifier_settings
from realtime.events import dumps
from realtime.notify import BatchRequestSerializer, validated_notify
from realtime.publish import PublishError, PublishRequest, PublishResult, Unavailable, apublish, apublish_many
from realtime.scope import header

from .authentication import bearer_key
from .exceptions import InvalidApiKey, PayloadTooLarge, batch_error, exception_handler, nothing_published
from .keys import KeyCache
from .models import ApiKey, hash_key
from .permissions import check_key_channels

logger = logging.getLogger(__name__)

ASGIApp = Any
NOTIFY, BATCH = "/api/notify", "/api/notify/batch"
JSON_HEADERS = [(b"content-type", b"application/json")]
# Bodies above this are parsed only once the key is known to be good (one more Redis call).
CHECK_KEY_BEFORE_PARSING_BYTES = 256 * 1024


class FastPublishApp:
    """ASGI: POST /api/notify and /api/notify/batch here (Redis mode); the rest to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.keys = KeyCache()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path") if scope["type"] == "http" and scope["method"] == "POST" else None
        if path not in (NOTIFY, BATCH) or notifier_settings.embedded:
            await self.app(scope, receive, send)
            return
        read = await _read_body(receive)
        if read is None:
            return  # the client went away
        try:
            status, answer = await self.handle(path == BATCH, scope, *read)
            headers: list[tuple[bytes, bytes]] = []
        except Exception as exc:  # noqa: BLE001 - every refusal is answered as the DRF views answer it
            status, answer, headers = _error(exc)
        content = dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(content)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": content})

    async def handle(
        self, batch: bool, scope: dict[str, Any], body: bytes, too_large: bool
    ) -> tuple[int, dict[str, Any]]:
        """The view's checks in DRF's order: authentication, scope, body, rate, then each event."""
        key_hash = hash_key(_bearer_key(scope))
        if not too_large and len(body) > CHECK_KEY_BEFORE_PARSING_BYTES:
            # Parsing megabytes holds the event loop: never do it for an unknown key.
            if (await self.keys.check(key_hash, 0)).key is None:
                raise InvalidApiKey("unknown or revoked API key")
        parsed, parse_error = _parse(body, too_large)
        events = parsed.get("events") if batch and isinstance(parsed, dict) else None
        cost = len(events) if isinstance(events, list) else 1
        checked = await self.keys.check(key_hash, cost)
        if checked.key is None:
            raise InvalidApiKey("unknown or revoked API key")
        key = checked.key
        if not key.has_scope("publish"):
            raise exceptions.PermissionDenied("this API key lacks the 'publish' scope")
        if parse_error is not None:
            raise parse_error
        if checked.used > checked.limit:
            raise exceptions.Throttled(wait=checked.retry_after)
        publisher = f"key:{key.pk}"
        if not batch:
            attrs = validated_notify(parsed)
            check_key_channels(key, attrs["targets"])
            result = await apublish(
                attrs["targets"],
                attrs["event"],
                attrs.get("data"),
                idempotency_key=attrs.get("idempotency_key"),
                publisher=publisher,
            )
            return 202, result.as_dict()
        return 202, await self._publish_batch(key, publisher, parsed)

    async def _publish_batch(self, key: ApiKey, publisher: str, parsed: Any) -> dict[str, Any]:
        events = parsed.get("events") if isinstance(parsed, dict) else None
        if not isinstance(events, list) or not events or len(events) > notifier_settings.MAX_BATCH_EVENTS:
            batch = BatchRequestSerializer(data=parsed)
            batch.is_valid(raise_exception=True)  # words the error; a valid batch never gets here
            events = batch.validated_data["events"]
        results: list[dict[str, Any]] = []
        requests: list[tuple[int, PublishRequest]] = []
        for index, body in enumerate(events):
            try:
                attrs = validated_notify(body)
                check_key_channels(key, attrs["targets"])
            except (exceptions.APIException, PublishError) as exc:
                results.append(batch_error(exc))
                continue
            results.append({})
            requests.append(
                (
                    index,
                    PublishRequest(
                        attrs["targets"],
                        attrs["event"],
                        attrs.get("data"),
                        idempotency_key=attrs.get("idempotency_key"),
                        publisher=publisher,
                    ),
                )
            )
        answers = await apublish_many([request for _, request in requests])
        for (index, _), answer in zip(requests, answers, strict=True):
            results[index] = answer.as_dict() if isinstance(answer, PublishResult) else batch_error(answer)
        if nothing_published(results):
            raise Unavailable("Redis is unavailable; no event was published")
        return {"results": results}


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
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        error = PayloadTooLarge(f"request body is over {limit} bytes")
        error.notifier_details = {"limit": limit}  # type: ignore[attr-defined]
        return None, error
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, exceptions.ParseError(f"JSON parse error - {exc}")
    except RecursionError:
        return None, exceptions.ParseError("JSON parse error - nested too deeply")


def _error(exc: Exception) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
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
