"""Celery tasks: `notifier.notify` takes exactly the `POST /api/notify` body as kwargs."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from rest_framework.exceptions import ValidationError

from realtime.notify import publish_request, validated_notify
from realtime.publish import NotReplicated, PublishError, StoredNotSent, Unavailable, publish

logger = logging.getLogger(__name__)

CELERY_PUBLISHER = "celery"


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
