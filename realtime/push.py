"""Web Push (DESIGN §11): browsers' subscriptions, the pushes an event makes, and sending one.

A publish with `push` queues one Celery task (`notifier.push_event`) once the event is
stored. That task picks the users to reach (`when: "offline"`: those with no live connection
in the cluster at that moment; never a user who turned pushes off for the category), writes
one `PushDelivery` per subscription of theirs, and queues each (`notifier.push`). Sending
encrypts the payload for the subscription (aes128gcm, RFC 8291, by pywebpush), signs it
(VAPID, RFC 8292, by py-vapid) and POSTs it through `outbound` (no private addresses).

One push per (event, subscription): the delivery row is unique, a worker takes it with a
conditional UPDATE (pending and due, or sending with its lease run out) and marks it sent once
the push service accepted it. The one window left is a worker killed between the push
service's 201 and that mark; then the push goes again once the lease runs out, with the same
`tag` (the event id unless given), so the browser replaces the first instead of showing two.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from django.utils import timezone
from pywebpush import WebPusher

from . import background, leases, metrics, outbound, rosters, vapid, webhooks
from .bridge import run_sync
from .events import dumps, rfc3339
from .models import InboxPreference, PushDelivery, PushSubscription

logger = logging.getLogger(__name__)

# A push service takes at most 4,096 bytes of body (RFC 8030 §7.2); aes128gcm adds an 86-byte
# header, a 1-byte padding delimiter and a 16-byte tag (RFC 8188, RFC 8291 §4).
MAX_PAYLOAD_BYTES = 4096 - 86 - 1 - 16
URGENCIES = ("very-low", "low", "normal", "high")
WHEN = ("offline", "always")
DEFAULT_TTL_SECS = 24 * 3600
MAX_TTL_SECS = 28 * 24 * 3600
LEASE_SECS = 60  # a send that takes longer (it has a 5 s timeout) is taken for dead
MAX_BACKOFF_SECS = 600
MAX_RETRY_AFTER_SECS = 6 * 3600


@dataclass(frozen=True)
class PushSpec:
    """A publish's validated `push` object."""

    title: str
    body: str
    url: str | None = None
    icon: str | None = None
    tag: str | None = None
    ttl: int = DEFAULT_TTL_SECS
    urgency: str | None = None
    when: str = "offline"

    def payload(self, event_id: str, channel: str, event: str) -> dict[str, Any]:
        """What the browser decrypts: DESIGN §11's document. The tag is the event id unless
        given, so a push sent twice replaces itself."""
        return {
            "title": self.title,
            "body": self.body,
            "url": self.url,
            "icon": self.icon,
            "tag": self.tag or event_id,
            "id": event_id,
            "channel": channel,
            "event": event,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def payload_size(spec: PushSpec, channels: Iterable[str], event: str) -> int:
    """The largest encoded payload `spec` makes for these target channels (event ids are 32
    characters)."""
    return max(len(dumps(spec.payload("0" * 32, channel, event)).encode()) for channel in channels)


# Subscriptions


class InvalidSubscription(ValueError):
    """A `PushSubscription.toJSON()` that cannot be used; the message says why."""


@dataclass(frozen=True)
class Registered:
    id: int
    created: bool


def register(user: str, endpoint: str, p256dh: str, auth: str, expires_at: datetime | None) -> Registered:
    """Store `user`'s subscription; an endpoint registered already is updated (and moved to
    `user`: the browser is theirs now), not added twice."""
    try:
        outbound.check_url(endpoint)
    except outbound.Refused as exc:
        raise InvalidSubscription(f"endpoint: {exc}") from None
    _check_keys(p256dh, auth)
    found, created = PushSubscription.objects.update_or_create(
        endpoint=endpoint, defaults={"user": user, "p256dh": p256dh, "auth": auth, "expires_at": expires_at}
    )
    return Registered(found.pk, created)


def _check_keys(p256dh: str, auth: str) -> None:
    try:
        point = vapid.b64url_decode(p256dh)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, TypeError):
        raise InvalidSubscription("keys.p256dh: must be base64url of an uncompressed P-256 point") from None
    if len(point) != 65:
        raise InvalidSubscription("keys.p256dh: must be base64url of an uncompressed P-256 point")
    try:
        secret = vapid.b64url_decode(auth)
    except ValueError:
        secret = b""
    if len(secret) != 16:
        raise InvalidSubscription("keys.auth: must be base64url of 16 bytes")


def subscriptions_of(user: str) -> list[dict[str, Any]]:
    found = PushSubscription.objects.filter(user=user).order_by("id")
    return [{"id": s.pk, "endpoint": s.endpoint, "created_at": rfc3339(s.created_at)} for s in found]


def unregister(user: str, subscription_id: int) -> bool:
    deleted, _ = PushSubscription.objects.filter(user=user, pk=subscription_id).delete()
    return deleted > 0


# What an event pushes

PUSH_EVENT_TASK = "notifier.push_event"  # worker/tasks.py


class Planned(NamedTuple):
    """A stored event's pushes, before anyone is picked: its spec, its name, the targeted
    (user, channel)s and its category (for the users' preferences)."""

    spec: PushSpec
    event: str
    targets: list[tuple[str, str]]
    category: str | None


def queue(event_id: str, planned: Planned) -> None:
    """Hand a stored event's pushes to a Celery worker, without waiting: the publish answer
    is not delayed by them."""
    kwargs = {
        "event_id": event_id,
        "event": planned.event,
        "targets": [list(target) for target in planned.targets],
        "push": planned.spec.as_dict(),
        "category": planned.category,
    }
    background.queue_soon(PUSH_EVENT_TASK, kwargs, _not_queued)


def _not_queued(error: BaseException) -> None:
    logger.warning("pushes of a published event not queued: %s", error)
    metrics.inc("notifier_pushes", outcome="not_queued")


def plan(
    event_id: str, event: str, targets: Sequence[tuple[str, str]], spec: PushSpec, category: str | None
) -> list[int]:
    """The deliveries of one event, written once however often this runs: for each targeted
    (user, channel) that `spec.when` and the user's preferences let through, one per
    subscription. Their ids, those still to send."""
    users = list(dict.fromkeys(user for user, _ in targets))
    if spec.when == "offline":
        online = run_sync(rosters.user_connections().held, users)
        users = [user for user in users if user not in online]
    if category is not None and users:
        muted = set(
            InboxPreference.objects.filter(user__in=users, category=category, push=False).values_list("user", flat=True)
        )
        users = [user for user in users if user not in muted]
    if not users:
        return []
    channel_of = dict(targets)
    now = timezone.now()
    rows = [
        PushDelivery(
            event_id=event_id,
            subscription=subscription,
            user=subscription.user,
            payload=spec.payload(event_id, channel_of[subscription.user], event),
            ttl=spec.ttl,
            urgency=spec.urgency or "",
            next_attempt_at=now,
            give_up_at=now + timedelta(seconds=spec.ttl),
        )
        for subscription in PushSubscription.objects.filter(user__in=users)
    ]
    PushDelivery.objects.bulk_create(rows, ignore_conflicts=True)
    return list(
        PushDelivery.objects.filter(event_id=event_id, user__in=users, status=PushDelivery.PENDING).values_list(
            "id", flat=True
        )
    )


# Sending one


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. `retry_in`: seconds until the next attempt (for `retry`)."""

    name: str  # sent | retry | gone | rejected | expired | taken (not ours to send)
    retry_in: float | None = None


def deliver(delivery_id: int, client: requests.Session) -> Outcome:
    """One attempt at `delivery_id`, if it is due and nobody else holds it."""
    now = timezone.now()
    taken = leases.take(PushDelivery, delivery_id, LEASE_SECS)
    if not taken:
        return Outcome("taken")
    delivery = PushDelivery.objects.select_related("subscription").get(pk=delivery_id)
    if now >= delivery.give_up_at:
        return _give_up(delivery, "expired", "its ttl ran out before a push service took it")
    delivery.attempts += 1
    try:
        answer = _send(delivery, client)
    except outbound.Refused as exc:
        return _give_up(delivery, "rejected", f"refused: {exc}")
    except outbound.Failed as exc:
        return _again(delivery, None, str(exc), None)
    status = answer.status
    if 200 <= status < 300:
        PushDelivery.objects.filter(pk=delivery.pk).update(
            status=PushDelivery.SENT, sent_at=timezone.now(), attempts=delivery.attempts, last_status=status,
            last_error="", lease_until=None,
        )  # fmt: skip
        return _counted(Outcome("sent"))
    if status in (404, 410):  # the browser unsubscribed, or the push service forgot it
        logger.info("push subscription %s is gone (%s): deleted", delivery.subscription_id, status)
        PushSubscription.objects.filter(pk=delivery.subscription_id).delete()
        return _counted(Outcome("gone"))
    if status == 429 or status >= 500:
        return _again(delivery, status, _text(answer.body), _retry_after(answer.headers.get("retry-after")))
    return _give_up(delivery, "rejected", _text(answer.body), status)  # 400, 413, 3xx, other 4xx


def _send(delivery: PushDelivery, client: requests.Session) -> outbound.Answer:
    subscription = delivery.subscription
    info = {"endpoint": subscription.endpoint, "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth}}
    body = WebPusher(info).encode(dumps(delivery.payload).encode(), "aes128gcm")["body"]
    headers = {
        "Authorization": vapid.authorization(subscription.endpoint),
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "TTL": str(delivery.ttl),
    }
    if delivery.urgency:
        headers["Urgency"] = delivery.urgency
    return outbound.post(client, subscription.endpoint, body, headers)


def _again(delivery: PushDelivery, status: int | None, error: str, retry_after: float | None) -> Outcome:
    """Another attempt later: after Retry-After when the push service gave one, else an
    exponential backoff with jitter; never past the push's ttl (then it is given up)."""
    backoff = min(MAX_BACKOFF_SECS, 2 ** min(delivery.attempts, 20)) * random.uniform(0.5, 1.0)  # noqa: S311
    delay = max(backoff, retry_after or 0.0)
    at = timezone.now() + timedelta(seconds=delay)
    if at >= delivery.give_up_at:
        return _give_up(delivery, "expired", f"gave up within its ttl; last: {error}", status)
    PushDelivery.objects.filter(pk=delivery.pk).update(
        status=PushDelivery.PENDING, next_attempt_at=at, attempts=delivery.attempts, last_status=status,
        last_error=error[:300], lease_until=None,
    )  # fmt: skip
    return _counted(Outcome("retry", delay))


def _give_up(delivery: PushDelivery, name: str, error: str, status: int | None = None) -> Outcome:
    """Mark the push failed, and tell the backend (`push.failed` webhooks)."""
    logger.warning(
        "push %s to subscription %s given up (%s): %s", delivery.event_id, delivery.subscription_id, name, error
    )
    webhooks.emit("push.failed", {"user": delivery.user, "subscription": delivery.subscription_id, "status": status})
    PushDelivery.objects.filter(pk=delivery.pk).update(
        status=PushDelivery.FAILED, attempts=delivery.attempts, last_status=status, last_error=error[:300],
        lease_until=None,
    )  # fmt: skip
    return _counted(Outcome(name))


def _counted(outcome: Outcome) -> Outcome:
    metrics.inc("notifier_pushes", outcome=outcome.name)
    return outcome


def _retry_after(value: str | None) -> float | None:
    """RFC 9110 Retry-After: seconds, or an HTTP date; capped, so a push service cannot park a
    push beyond reason."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), MAX_RETRY_AFTER_SECS))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, min((when - timezone.now()).total_seconds(), MAX_RETRY_AFTER_SECS))


def _text(body: bytes) -> str:
    return body[:300].decode("utf-8", "replace")


def due(grace_secs: float, limit: int = 1000) -> list[int]:
    """Deliveries whose task may have been lost (`leases.lost`)."""
    return leases.lost(PushDelivery, grace_secs, limit)
