"""Delivery rows (pushes, webhooks, scheduled events) that workers take one attempt at a
time: a row is taken when pending and due, or sending with its lease run out (its worker died
mid-send)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Model, Q
from django.utils import timezone

PENDING, SENDING = "pending", "sending"  # the models' status values


def takeable(now: datetime) -> Q:
    """The rows an attempt may take at `now`: pending and due, or sending with their lease run out."""
    return Q(status=PENDING, next_attempt_at__lte=now) | Q(status=SENDING, lease_until__lt=now)


def take(model: type[Model], pk: int, lease_secs: float) -> bool:
    """Take row `pk` for one attempt (a conditional UPDATE: only one worker wins)."""
    now = timezone.now()
    taken = model._default_manager.filter(takeable(now), pk=pk).update(
        status=SENDING, lease_until=now + timedelta(seconds=lease_secs)
    )
    return bool(taken)


def lost(model: type[Model], grace_secs: float, limit: int = 1000) -> list[int]:
    """Rows whose task may have been lost: pending and due for more than `grace_secs`, or
    sending with their lease run out. Queuing one again is safe: `take` lets one attempt in."""
    now = timezone.now()
    late = now - timedelta(seconds=grace_secs)
    found = model._default_manager.filter(
        Q(status=PENDING, next_attempt_at__lte=late) | Q(status=SENDING, lease_until__lt=now)
    ).order_by("next_attempt_at")[:limit]
    return list(found.values_list("id", flat=True))
