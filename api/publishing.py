"""The notify core: every POST /api/notify and /api/notify/batch is answered here.

Two doors lead in, and they differ only in how a request reaches them and how its API key is
found: api/fast.py, the event-loop route every server process answers with (keys from its
cache, DESIGN §8), and the DRF views of api/views.py (Django's test client; they also define
the OpenAPI schema). Both hand over a `NotifyCall`, and every rule is applied here, in one
order: the key is known (401) and holds the publish scope (403), the body parsed (400, 413),
the key's rate window has room (429), then each event is validated once (realtime/notify.py),
checked against the key's channel patterns (403) and published.

Errors are raised as DRF `APIException`s (or `PublishError`s), which both doors answer through
api/exceptions.py: `{"code", "message", "details"}` with DRF's status and headers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from rest_framework import exceptions

from realtime import scheduling
from realtime.conf import notifier_settings
from realtime.notify import BatchRequestSerializer, publish_request, validated_notify
from realtime.publish import PublishError, PublishRequest, PublishResult, Unavailable, apublish, apublish_many

from . import rates
from .exceptions import InvalidApiKey, batch_error, nothing_published
from .models import ApiKey
from .permissions import check_key_channels


class NotifyCall(NamedTuple):
    """One publish request, as a door hands it over."""

    batch: bool
    key: ApiKey | None  # None: no active key has the presented value
    body: Any  # the parsed JSON body
    body_error: exceptions.APIException | None = None  # why there is no body to read
    window: rates.Window | None = None  # counted by the door already (in its key lookup), or here


def cost_of(batch: bool, body: Any) -> int:
    """What a request counts against its key's rate window: a batch counts each event."""
    events = body.get("events") if batch and isinstance(body, dict) else None
    return len(events) if isinstance(events, list) else 1


async def answer(call: NotifyCall) -> dict[str, Any]:
    """The 202 answer to `call`; raises the refusal otherwise."""
    if call.key is None:
        raise InvalidApiKey("unknown or revoked API key")
    key = call.key
    if not key.has_scope("publish"):
        raise exceptions.PermissionDenied("this API key lacks the 'publish' scope")
    if call.body_error is not None:
        raise call.body_error
    window = call.window
    if window is None:
        window = (await rates.count(key.key_hash, cost_of(call.batch, call.body))).window
    if window.exceeded:
        raise exceptions.Throttled(wait=window.retry_after)
    publisher = f"key:{key.pk}"
    if call.batch:
        return await notify_batch(key, publisher, call.body)
    return await notify(key, publisher, call.body)


async def notify(key: ApiKey, publisher: str, body: Any) -> dict[str, Any]:
    """Publish one event for `key`: `{"id", "channels"}`; or keep it for later (DESIGN §12)."""
    request, later = _request(key, publisher, body)
    if later is not None:
        return await scheduling.ahold(request, later)
    result = await apublish(request.channels, request.event, request.data, **request.options())
    return result.as_dict()


async def notify_batch(key: ApiKey, publisher: str, body: Any) -> dict[str, Any]:
    """Publish a batch for `key`: `{"results": [...]}`, one slot per event in request order,
    each an answer or `{"error"}`; a 503 as a whole only when nothing at all was stored."""
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list) or not events or len(events) > notifier_settings.MAX_BATCH_EVENTS:
        batch = BatchRequestSerializer(data=body)
        batch.is_valid(raise_exception=True)  # words the error; a valid batch never gets here
        events = batch.validated_data["events"]
    results: list[dict[str, Any]] = []
    requests: list[tuple[int, PublishRequest]] = []
    held: list[tuple[int, PublishRequest, scheduling.Later]] = []
    for index, event in enumerate(events):
        try:
            request, later = _request(key, publisher, event)
        except (exceptions.APIException, PublishError) as exc:
            results.append(batch_error(exc))
            continue
        results.append({})
        if later is None:
            requests.append((index, request))
        else:
            held.append((index, request, later))
    if held:
        kept = await scheduling.ahold_many([(request, later) for _, request, later in held])
        for (index, _, _), answer in zip(held, kept, strict=True):
            results[index] = batch_error(answer) if isinstance(answer, PublishError) else answer
    answers = await apublish_many([request for _, request in requests])
    for (index, _), published in zip(requests, answers, strict=True):
        results[index] = published.as_dict() if isinstance(published, PublishResult) else batch_error(published)
    if nothing_published(results):
        raise Unavailable("Redis is unavailable; no event was published")
    return {"results": results}


def _request(key: ApiKey, publisher: str, body: Any) -> tuple[PublishRequest, scheduling.Later | None]:
    """One event's body, validated and checked against the key's channel patterns; and when
    it goes out if not now."""
    attrs = validated_notify(body)
    check_key_channels(key, attrs["targets"])
    return publish_request(attrs, publisher), attrs.get("later")
