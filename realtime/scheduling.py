"""Later, and fewer (DESIGN §12): events published at a time (`deliver_at`, `delay`), and
digests that collect the publishes of one key and target for a window into one event.

Both are rows in the database (`ScheduledEvent`), not broker messages: Celery's `eta` with the
Redis broker delivers a task twice once it waits longer than the visibility timeout, and keeps
prefetched ones in worker memory. `dispatch` (Celery beat runs it every NOTIFIER_DISPATCH_SECS;
the embedded mode runs it on the server's event loop) takes due rows with `SELECT … FOR UPDATE
SKIP LOCKED` and a lease, so dispatchers racing each other never take one row twice, and
publishes each through `apublish_many` with the row's event id as idempotency key: a dispatcher
killed before it marked a row delivered leaves it to another once the lease ends, whose publish
then answers the first one's result and sends nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from redis.exceptions import RedisError

from . import leases
from .bridge import in_thread, run_sync
from .conf import notifier_settings
from .events import dumps, new_event_id, rfc3339
from .models import ScheduledEvent
from .publish import (
    NotReplicated,
    PublishError,
    PublishRequest,
    PublishResult,
    StoredNotSent,
    Unavailable,
    apublish_many,
    claim_key,
)
from .push import PushSpec

logger = logging.getLogger(__name__)

DEFAULT_DIGEST_MAX = 50
MAX_DIGEST_MAX = 100
MAX_DIGEST_WINDOW_SECS = 86400
DISPATCH_BATCH = 200  # rows taken per transaction
DISPATCH_BUDGET_SECS = 5.0  # one dispatch run stops taking more after this; the next tick goes on
MAX_RETRY_SECS = 60


@dataclasses.dataclass(frozen=True)
class Digest:
    key: str
    window: int  # seconds from the first publish
    max: int = DEFAULT_DIGEST_MAX  # items kept (all are counted)


@dataclasses.dataclass(frozen=True)
class Later:
    """When a publish goes out instead of now: at `deliver_at`, or in a digest."""

    deliver_at: datetime | None = None
    digest: Digest | None = None


# Holding a publish


async def ahold(request: PublishRequest, later: Later) -> dict[str, Any]:
    """Keep `request` for later, refusing now what its publish would refuse (PublishError);
    the 202 answer. An idempotency key makes a retry answer the first one's answer."""
    (answer,) = await ahold_many([(request, later)])
    if isinstance(answer, PublishError):
        raise answer
    return answer


async def ahold_many(held: list[tuple[PublishRequest, Later]]) -> list[dict[str, Any] | PublishError]:
    """`ahold` for each, in order, each answer or its own PublishError; the scheduled ones
    written in one transaction (a batch's), the digested ones one by one."""
    answers: list[dict[str, Any] | PublishError | None] = [None] * len(held)
    scheduled: list[tuple[int, PublishRequest, datetime]] = []
    for index, (request, later) in enumerate(held):
        try:
            request.check()
            if later.digest is not None:
                answers[index] = await _digest(request, later.digest)
            else:
                assert later.deliver_at is not None
                scheduled.append((index, request, later.deliver_at))
        except PublishError as exc:
            answers[index] = exc
        except DatabaseError as exc:
            answers[index] = _database_down(exc)
    if scheduled:
        try:
            rows = await in_thread(_schedule, [(request, deliver_at) for _, request, deliver_at in scheduled])
        except DatabaseError as exc:
            for index, _, _ in scheduled:
                answers[index] = _database_down(exc)
        else:
            for (index, _, _), row in zip(scheduled, rows, strict=True):
                answers[index] = {"id": row.event_id, "scheduled": True, "deliver_at": rfc3339(row.deliver_at)}
    assert all(answer is not None for answer in answers)
    return answers  # type: ignore[return-value]


def _database_down(exc: DatabaseError) -> Unavailable:
    logger.warning("scheduling failed: %s", exc)
    return Unavailable("the database is unavailable; the event was not scheduled")


async def _digest(request: PublishRequest, digest: Digest) -> dict[str, Any]:
    if request.idempotency_key is None:
        return await in_thread(_collect, request, digest)
    # A digest has one row for many publishes: the key is kept where publishes keep theirs.
    store, key, claimed = await claim_key(request.publisher, request.idempotency_key)
    if claimed.answer is not None:
        return claimed.answer
    try:
        answer = await in_thread(_collect, request, digest)
    except BaseException:
        with contextlib.suppress(RedisError, OSError):
            await store.release(key)
        raise
    with contextlib.suppress(RedisError, OSError):  # the claim lapses; a retry then collects again
        await store.complete(key, dumps(answer), notifier_settings.IDEMPOTENCY_WINDOW_SECS)
    return answer


def hold(request: PublishRequest, later: Later) -> dict[str, Any]:
    """`ahold` for sync code (Celery tasks)."""
    return run_sync(ahold, request, later)


def _options(request: PublishRequest) -> dict[str, Any]:
    push = dataclasses.asdict(request.push) if request.push is not None else None
    return {"sender": request.sender, "inbox": request.inbox, "category": request.category, "push": push}


def _schedule(held: list[tuple[PublishRequest, datetime]]) -> list[ScheduledEvent]:
    """Write the rows: those without an idempotency key in one statement; one with a key that
    names a row already is answered with that row."""
    rows = [
        ScheduledEvent(
            event_id=new_event_id(),
            publisher=request.publisher,
            idempotency_key=request.idempotency_key or "",
            channels=list(request.channels),
            event=request.event,
            data=request.data,
            options=_options(request),
            deliver_at=deliver_at,
            next_attempt_at=deliver_at,
        )
        for request, deliver_at in held
    ]
    with transaction.atomic():
        ScheduledEvent.objects.bulk_create([row for row in rows if not row.idempotency_key])
    for n, row in enumerate(rows):
        if row.idempotency_key:
            try:
                with transaction.atomic():
                    row.save()
            except IntegrityError:
                rows[n] = ScheduledEvent.objects.get(publisher=row.publisher, idempotency_key=row.idempotency_key)
    return rows


def _collect(request: PublishRequest, digest: Digest) -> dict[str, Any]:
    rows = [_add_to_digest(channel, request, digest) for channel in request.channels]
    answer: dict[str, Any] = {"id": rows[0].event_id, "digest": {"key": digest.key}}
    answer["digest"]["deliver_at"] = rfc3339(max(row.deliver_at for row in rows))
    if len(rows) > 1:
        answer["digest"]["events"] = {row.digest_channel: row.event_id for row in rows}
    return answer


def _add_to_digest(channel: str, request: PublishRequest, digest: Digest) -> ScheduledEvent:
    """Count the publish in the open digest of (key, channel), opening one if there is none.
    The row is locked while it changes; two publishes opening it at once: one wins, the other
    adds to it."""
    for _ in range(3):
        now = timezone.now()
        try:
            with transaction.atomic():
                row = (
                    ScheduledEvent.objects.select_for_update()
                    .filter(digest_key=digest.key, digest_channel=channel, digest_open=True)
                    .first()
                )
                if row is None:
                    deliver_at = now + timedelta(seconds=digest.window)
                    return ScheduledEvent.objects.create(
                        event_id=new_event_id(),
                        publisher=request.publisher,
                        channels=[channel],
                        event=request.event,
                        data=[request.data],
                        options=_options(request),
                        deliver_at=deliver_at,
                        next_attempt_at=deliver_at,
                        digest_key=digest.key,
                        digest_channel=channel,
                        digest_open=True,
                        digest_max=digest.max,
                        first_at=now,
                        last_at=now,
                    )
                row.count += 1
                row.last_at = now
                items: list[Any] = row.data or []
                if len(items) < (row.digest_max or DEFAULT_DIGEST_MAX) and _fits([*items, request.data]):
                    row.data = [*items, request.data]
                row.save(update_fields=["count", "last_at", "data"])
                return row
        except IntegrityError:
            continue  # another publish opened it first: add to theirs
    raise Unavailable("the digest changed too often to be added to; retry")


def _fits(items: list[Any]) -> bool:
    """Whether the digest's data, with these items, stays within the payload limit."""
    return len(dumps(items).encode()) + 200 <= notifier_settings.MAX_PAYLOAD_BYTES


# Dispatching


def dispatch(limit: int = DISPATCH_BATCH, budget_secs: float = DISPATCH_BUDGET_SECS) -> int:
    """`adispatch` for sync code (the Celery task)."""
    return run_sync(adispatch, limit, budget_secs)


async def adispatch(limit: int = DISPATCH_BATCH, budget_secs: float = DISPATCH_BUDGET_SECS) -> int:
    """Publish what is due, `limit` rows at a time, until none is left or `budget_secs` have
    passed; how many were published. The database work runs in a thread, the publishes on
    this loop."""
    published = 0
    deadline = time.monotonic() + budget_secs
    while True:
        rows = await in_thread(_take_due, limit)
        if rows:
            answers = await apublish_many([publish_request(row) for row in rows])
            published += await in_thread(_mark, rows, answers)
        if len(rows) < limit or time.monotonic() >= deadline:
            return published


def _take_due(limit: int) -> list[ScheduledEvent]:
    """Take up to `limit` due rows for one attempt: pending and due, or sending with their
    lease run out (their dispatcher died). Rows another dispatcher is taking are skipped."""
    now = timezone.now()
    lease_until = now + timedelta(seconds=notifier_settings.DISPATCH_LEASE_SECS)
    with transaction.atomic():
        rows = list(
            ScheduledEvent.objects.select_for_update(skip_locked=True)
            .filter(leases.takeable(now))
            .order_by("next_attempt_at", "pk")[:limit]
        )
        ScheduledEvent.objects.filter(pk__in=[row.pk for row in rows]).update(
            status=ScheduledEvent.SENDING, lease_until=lease_until, attempts=F("attempts") + 1, digest_open=False
        )
    return rows


def publish_request(row: ScheduledEvent) -> PublishRequest:
    """The publish a row makes: the event it was scheduled as, or the digest's one event."""
    options = row.options
    data = row.data
    if row.digest_key:
        first_at, last_at = rfc3339(row.first_at), rfc3339(row.last_at)
        data = {"count": row.count, "items": row.data, "first_at": first_at, "last_at": last_at}
    return PublishRequest(
        row.channels,
        row.event,
        data,
        sender=options.get("sender"),
        idempotency_key=f"scheduled/{row.event_id}",
        publisher=row.publisher,
        inbox=options.get("inbox", False),
        category=options.get("category"),
        push=PushSpec(**options["push"]) if options.get("push") else None,
        event_id=row.event_id,
    )


def _mark(rows: list[ScheduledEvent], answers: list[PublishResult | PublishError]) -> int:
    """Record each row's outcome: delivered, due again later (Redis unavailable) or failed
    (refused); how many were delivered."""
    now = timezone.now()
    delivered, again, failed = [], [], []
    for row, answer in zip(rows, answers, strict=True):
        if isinstance(answer, PublishResult) or (
            isinstance(answer, StoredNotSent) and not isinstance(answer, NotReplicated)
        ):
            delivered.append(row.pk)  # stored: the hubs deliver it from history if not sent
        elif isinstance(answer, Unavailable):
            again.append((row, str(answer)))
        else:
            assert isinstance(answer, PublishError)
            failed.append((row, f"{answer.code}: {answer.message}"))
    ScheduledEvent.objects.filter(pk__in=delivered).update(
        status=ScheduledEvent.DELIVERED, delivered_at=now, lease_until=None
    )
    for row, error in again:
        retry_in = min(MAX_RETRY_SECS, 2 ** min(row.attempts + 1, 6))
        ScheduledEvent.objects.filter(pk=row.pk).update(
            status=ScheduledEvent.PENDING,
            next_attempt_at=now + timedelta(seconds=retry_in),
            lease_until=None,
            last_error=error[:300],
        )
    for row, error in failed:
        logger.warning("scheduled event %s refused at delivery: %s", row.event_id, error)
        ScheduledEvent.objects.filter(pk=row.pk).update(
            status=ScheduledEvent.FAILED, lease_until=None, last_error=error[:300]
        )
    if again:
        logger.warning("%d scheduled events not published (Redis unavailable); retried", len(again))
    return len(delivered)


# Looking and cancelling


def cancel(event_id: str) -> bool:
    """Cancel a scheduled event not yet taken for delivery; False when there is none."""
    return bool(cancel_rows(ScheduledEvent.objects.filter(event_id=event_id, digest_key="")))


def cancel_rows(rows: QuerySet[ScheduledEvent]) -> int:
    """Cancel those of `rows` not yet taken for delivery (a digest stops collecting: the next
    publish with its key opens a new one); how many."""
    return rows.filter(status=ScheduledEvent.PENDING).update(status=ScheduledEvent.CANCELLED, digest_open=False)


def describe(row: ScheduledEvent) -> dict[str, Any]:
    return {"id": row.event_id, "deliver_at": rfc3339(row.deliver_at), "targets": row.channels, "event": row.event}


# The embedded mode: no Celery beat, so the server process dispatches, on its event loop (the
# in-memory channel layer is not thread-safe).

_local: asyncio.Task[None] | None = None


def start_local_dispatcher() -> None:
    """Dispatch every NOTIFIER_DISPATCH_SECS from this event loop (the embedded server's)."""
    global _local
    if _local is None:
        _local = asyncio.get_running_loop().create_task(_dispatch_forever())


async def _dispatch_forever() -> None:
    while True:
        await asyncio.sleep(notifier_settings.DISPATCH_SECS)
        try:
            await adispatch()
        except Exception:
            logger.exception("dispatching scheduled events failed")
