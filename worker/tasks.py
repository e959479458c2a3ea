"""Celery tasks: `notifier.notify` takes exactly the `POST /api/notify` body as kwargs."""

from __future__ import annotations

import logging
import threading
from typing import Any

import requests
from celery import Task, shared_task
from rest_framework.exceptions import ValidationError

from realtime import background, outbound, rosters, scheduling, webhooks
from realtime import push as webpush
from realtime.bridge import run_sync
from realtime.conf import notifier_settings
from realtime.notify import publish_request, validated_notify
from realtime.publish import NotReplicated, PublishError, StoredNotSent, Unavailable, publish

logger = logging.getLogger(__name__)

CELERY_PUBLISHER = "celery"
PUSH_TASK = "notifier.push"


class InvalidNotification(Exception):
    """The task's kwargs were refused; retrying cannot help."""


@shared_task(
    bind=True,
    name="notifier.notify",
    autoretry_for=(Unavailable,),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=10,
)
def notify(self: Task, **body: Any) -> dict[str, Any]:
    """Publish one event; returns the notify answer (id and per-channel offset/epoch)."""
    try:
        attrs = validated_notify(body)
    except ValidationError as exc:
        raise InvalidNotification(str(exc.detail)) from None
    request = publish_request(attrs, CELERY_PUBLISHER)  # all tasks count as one publisher (DESIGN §4)
    try:
        if "later" in attrs:
            return scheduling.hold(request, attrs["later"])
        return publish(request.channels, request.event, request.data, **request.options()).as_dict()
    except NotReplicated as exc:
        # Stored and delivered; too few replicas acknowledged it in time. With its idempotency
        # key a retry publishes nothing twice and succeeds once the replicas caught up.
        if attrs.get("idempotency_key") is not None:
            raise
        logger.warning("notify: stored and delivered, not acknowledged by replicas in time: %s", exc.result.id)
        return exc.result.as_dict()
    except StoredNotSent as exc:
        # In history already, so the hubs deliver it (gap fill, position check). A retry
        # without an idempotency key would publish a second copy: end the task here.
        logger.warning("notify: stored, live send failed; delivered from history: %s", exc.result.id)
        return exc.result.as_dict()
    except Unavailable:
        raise
    except PublishError as exc:
        raise InvalidNotification(f"{exc.code}: {exc.message}") from None


# Web Push (DESIGN §11, realtime/push.py): an event's pushes are planned once, then each
# delivery is its own task, so a slow push service delays only its own pushes.

_outbound = threading.local()  # one HTTP session (its kept-alive connections) per worker thread


def _session() -> requests.Session:
    client = getattr(_outbound, "session", None)
    if client is None:
        client = _outbound.session = outbound.session()
    return client


@shared_task(name=webpush.PUSH_EVENT_TASK)
def push_event(
    event_id: str, event: str, targets: list[list[str]], push: dict[str, Any], category: str | None
) -> list[int]:
    """Write the deliveries of a stored event and queue each; their ids."""
    spec = webpush.PushSpec(**push)
    ids = webpush.plan(event_id, event, [(user, channel) for user, channel in targets], spec, category)
    for delivery_id in ids:
        push_delivery.delay(delivery_id)
    return ids


@shared_task(name=PUSH_TASK)
def push_delivery(delivery_id: int) -> str:
    """One attempt at one delivery; the next one is queued when the push service asks for it."""
    outcome = webpush.deliver(delivery_id, _session())
    if outcome.name == "retry" and outcome.retry_in is not None:
        background.queue(PUSH_TASK, {"delivery_id": delivery_id}, outcome.retry_in)
    return outcome.name


@shared_task(name=webhooks.WEBHOOK_TASK)
def webhook(delivery_id: int) -> str:
    """One attempt at one webhook delivery; the next one is queued if it failed."""
    outcome = webhooks.deliver(delivery_id, _session())
    if outcome.name == "retry" and outcome.retry_in is not None:
        background.queue(webhooks.WEBHOOK_TASK, {"delivery_id": delivery_id}, outcome.retry_in)
    return outcome.name


@shared_task(name="notifier.sweep")
def sweep() -> int:
    """Queue again the pushes and webhooks whose task was lost (a worker killed while it held
    one, or a broker that dropped it): pending and past due by two sweeps, or sending with
    their lease run out. And tell `presence.offline` for users, and `channel.vacated` for
    channels, whose server processes died.
    Celery beat runs this every NOTIFIER_SWEEP_SECS (CELERY_BEAT_SCHEDULE)."""
    grace = 2 * notifier_settings.SWEEP_SECS
    pushes, hooks = webpush.due(grace_secs=grace), webhooks.due(grace_secs=grace)
    for delivery_id in pushes:
        push_delivery.delay(delivery_id)
    for delivery_id in hooks:
        webhook.delay(delivery_id)
    for user in run_sync(rosters.user_connections().gone, 1000):  # their server process died
        webhooks.emit("presence.offline", {"user": user})
    for channel in run_sync(rosters.channel_processes().gone, 1000):  # so did every subscriber's
        webhooks.emit("channel.vacated", {"channel": channel})
    return len(pushes) + len(hooks)


@shared_task(name="notifier.dispatch")
def dispatch() -> int:
    """Publish the scheduled events and digests that are due (realtime/scheduling.py); Celery
    beat queues this every NOTIFIER_DISPATCH_SECS (CELERY_BEAT_SCHEDULE). Several at once take
    different rows."""
    return scheduling.dispatch()
