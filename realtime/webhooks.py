"""Webhooks to the backend (DESIGN §11): the service's own events, POSTed to the endpoints
that asked for them, signed as Standard Webhooks specifies.

`emit(type, data)` writes one `WebhookDelivery` per endpoint that subscribed to `type` and
queues each (`notifier.webhook`). Delivery is at least once, with the same `webhook-id` on
every attempt: non-2xx answers and timeouts are retried with an exponential backoff and
jitter for up to 24 h. An endpoint that has failed for 24 h is disabled (and shown as such);
a slow or dead endpoint holds up only its own deliveries. Requests go through `outbound`
(no private addresses), signed by the `standardwebhooks` library, so receivers verify with
it in any language.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import requests
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from . import background, leases, metrics, outbound
from .events import dumps, random_hex, rfc3339
from .models import WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

TYPES = (
    "presence.online",
    "presence.offline",
    "channel.occupied",
    "channel.vacated",
    "inbox.read",
    "push.failed",
)
WEBHOOK_TASK = "notifier.webhook"  # worker/tasks.py
RETRY_FOR_SECS = 24 * 3600  # a delivery is retried this long; an endpoint failing this long is disabled
MAX_BACKOFF_SECS = 3600
LEASE_SECS = 60
MAX_ENDPOINTS = 100


class InvalidEndpoint(ValueError):
    """A webhook endpoint that cannot be registered; the message says why."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


# Endpoints


def describe(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.pk,
        "url": endpoint.url,
        "events": list(endpoint.events),
        "created_at": rfc3339(endpoint.created_at),
        "disabled": endpoint.disabled_at is not None,
        "failing_since": rfc3339(endpoint.failing_since),
    }


def create(url: str, events: Sequence[str]) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (the only time the secret is shown)."""
    try:
        outbound.check_url(url)
    except outbound.Refused as exc:
        raise InvalidEndpoint(f"url: {exc}") from None
    unknown = sorted(set(events) - set(TYPES))
    if unknown or not events:
        raise InvalidEndpoint(f"events: choose one or more of {', '.join(TYPES)}")
    if WebhookEndpoint.objects.count() >= MAX_ENDPOINTS:
        raise InvalidEndpoint(f"at most {MAX_ENDPOINTS} webhook endpoints")
    secret = new_secret()
    endpoint = WebhookEndpoint.objects.create(url=url, events=list(dict.fromkeys(events)), secret=secret)
    forget_wanted()
    return endpoint, secret


def forget_wanted() -> None:
    """After a change of the endpoints: this process asks the database again (others within
    WANTED_CACHE_SECS)."""
    global _wanted
    _wanted = None


def rotate(endpoint_id: int) -> str | None:
    """A new secret for the endpoint (deliveries from now on are signed with it); None when
    there is no such endpoint. Rotating also enables a disabled endpoint again."""
    secret = new_secret()
    found = WebhookEndpoint.objects.filter(pk=endpoint_id).update(secret=secret, disabled_at=None, failing_since=None)
    forget_wanted()
    return secret if found else None


# Emitting

WANTED_CACHE_SECS = 5.0
_wanted: tuple[float, frozenset[str]] | None = None  # (until, the types enabled endpoints want)


def wanted(type: str) -> bool | None:  # noqa: A002 - the contract's name
    """Whether some enabled endpoint wants `type`, as `emit` last saw it (at most
    WANTED_CACHE_SECS ago); None when that is not known. Hot paths (a connection opening)
    skip their webhook work on False without touching the database."""
    if _wanted is None or _wanted[0] < time.monotonic():
        return None
    return type in _wanted[1]


def wanted_types() -> frozenset[str]:
    """The types some enabled endpoint wants, asking the database when the cache is stale."""
    if _wanted is None or _wanted[0] < time.monotonic():
        _enabled()
    assert _wanted is not None
    return _wanted[1]


def _enabled() -> list[WebhookEndpoint]:
    """The enabled endpoints; what they want is cached for `wanted`."""
    global _wanted
    enabled = list(WebhookEndpoint.objects.filter(disabled_at__isnull=True))
    _wanted = (time.monotonic() + WANTED_CACHE_SECS, frozenset(t for e in enabled for t in e.events))
    return enabled


def emit(type: str, data: dict[str, Any]) -> list[int]:  # noqa: A002 - the contract's name
    """Queue `type` with `data` to every enabled endpoint that subscribed to it; the
    deliveries' ids (none when nobody listens: one query)."""
    assert type in TYPES, type
    endpoints = [e for e in _enabled() if type in e.events]
    if not endpoints:
        return []
    now = timezone.now()
    body = {"type": type, "timestamp": rfc3339(now), "data": data}
    rows = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            endpoint=endpoint,
            message_id=f"msg_{random_hex(16)}",
            type=type,
            payload=body,
            next_attempt_at=now,
            give_up_at=now + timedelta(seconds=RETRY_FOR_SECS),
        )
        for endpoint in endpoints
    )
    for row in rows:
        background.queue(WEBHOOK_TASK, {"delivery_id": row.pk})
    return [row.pk for row in rows]


def redeliver(delivery_id: int) -> bool:
    """Send a delivery again (the admin's action), with the same webhook-id, as a new series
    of attempts."""
    now = timezone.now()
    found = WebhookDelivery.objects.filter(pk=delivery_id).exclude(status=WebhookDelivery.SENDING)
    if not found.update(
        status=WebhookDelivery.PENDING, next_attempt_at=now, give_up_at=now + timedelta(seconds=RETRY_FOR_SECS)
    ):
        return False
    background.queue(WEBHOOK_TASK, {"delivery_id": delivery_id})
    return True


# Delivering one


@dataclass(frozen=True)
class Outcome:
    name: str  # delivered | retry | failed | disabled | taken
    retry_in: float | None = None


def deliver(delivery_id: int, client: requests.Session) -> Outcome:
    """One attempt at `delivery_id`, if it is due and nobody else holds it."""
    taken = leases.take(WebhookDelivery, delivery_id, LEASE_SECS)
    if not taken:
        return Outcome("taken")
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    if endpoint.disabled_at is not None:
        return _finish(delivery, WebhookDelivery.FAILED, "disabled", None, "the endpoint is disabled")
    delivery.attempts += 1
    body = dumps(delivery.payload)
    stamp = timezone.now()
    headers = {
        "Content-Type": "application/json",
        "webhook-id": delivery.message_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(endpoint.secret).sign(delivery.message_id, stamp, body),
        "User-Agent": "notifier-webhooks",
    }
    try:
        answer = outbound.post(client, endpoint.url, body.encode(), headers)
    except outbound.Refused as exc:
        return _failed(delivery, None, f"refused: {exc}")
    except outbound.Failed as exc:
        return _failed(delivery, None, str(exc))
    if 200 <= answer.status < 300:
        WebhookEndpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=False).update(failing_since=None)
        return _finish(delivery, WebhookDelivery.DELIVERED, "delivered", answer.status, "")
    return _failed(delivery, answer.status, answer.body[:300].decode("utf-8", "replace"))


def _failed(delivery: WebhookDelivery, status: int | None, error: str) -> Outcome:
    """A failed attempt: another one after an exponential backoff with jitter, unless the
    delivery's 24 h ran out or its endpoint has now failed for 24 h (then it is disabled)."""
    now = timezone.now()
    endpoint = delivery.endpoint
    WebhookEndpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=True).update(failing_since=now)
    failing_since = endpoint.failing_since or now
    if now - failing_since >= timedelta(seconds=RETRY_FOR_SECS):
        logger.warning("webhook endpoint %s has failed for 24 h: disabled", endpoint.pk)
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(disabled_at=now)
        return _finish(delivery, WebhookDelivery.FAILED, "disabled", status, error)
    delay = min(MAX_BACKOFF_SECS, 2 ** min(delivery.attempts, 20)) * random.uniform(0.5, 1.0)  # noqa: S311
    at = now + timedelta(seconds=delay)
    if at >= delivery.give_up_at:
        return _finish(delivery, WebhookDelivery.FAILED, "failed", status, error)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDelivery.PENDING, next_attempt_at=at, attempts=delivery.attempts, last_status=status,
        last_error=error[:300], lease_until=None,
    )  # fmt: skip
    return _counted(Outcome("retry", delay))


def _finish(delivery: WebhookDelivery, status: str, outcome: str, http_status: int | None, error: str) -> Outcome:
    if status == WebhookDelivery.FAILED:
        logger.warning(
            "webhook %s to endpoint %s given up (%s): %s", delivery.message_id, delivery.endpoint_id, outcome, error
        )
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=status, attempts=delivery.attempts, last_status=http_status, last_error=error[:300], lease_until=None,
        delivered_at=timezone.now() if status == WebhookDelivery.DELIVERED else None,
    )  # fmt: skip
    return _counted(Outcome(outcome))


def _counted(outcome: Outcome) -> Outcome:
    metrics.inc("notifier_webhooks", outcome=outcome.name)
    return outcome


def due(grace_secs: float, limit: int = 1000) -> list[int]:
    """Deliveries whose task may have been lost (`leases.lost`)."""
    return leases.lost(WebhookDelivery, grace_secs, limit)
