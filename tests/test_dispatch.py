"""The dispatcher's two promises, each in isolation on PostgreSQL and a real Redis: dispatchers
taking due rows at once never take one twice (SKIP LOCKED), and a dispatcher that published
rows but died before marking them (its lease runs out) has them published again by another
with no second copy (the row's event id is the publish's idempotency key)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from realtime import scheduling
from realtime.bridge import run_sync
from realtime.history import get_history
from realtime.models import ScheduledEvent
from realtime.publish import apublish_many

from .support import RedisServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_settings(settings: Any, redis_server: RedisServer) -> Iterator[None]:
    settings.NOTIFIER = {**settings.NOTIFIER, "REDIS_URL": redis_server.url, "DISPATCH_LEASE_SECS": 1}
    yield


def due_rows(channel: str, count: int) -> list[str]:
    past = timezone.now() - timedelta(seconds=1)
    rows = [
        ScheduledEvent(
            event_id=f"{channel}-{n}",
            publisher="celery",
            channels=[channel],
            event="due",
            data={"n": n},
            deliver_at=past,
            next_attempt_at=past,
        )
        for n in range(count)
    ]
    return [row.event_id for row in ScheduledEvent.objects.bulk_create(rows)]


def test_dispatchers_taking_at_once_never_take_a_row_twice() -> None:
    ids = due_rows("race", 500)
    taken: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def take(mine: list[str]) -> None:
        start.wait()
        try:
            while rows := scheduling._take_due(7):
                mine.extend(row.event_id for row in rows)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [event_id for mine in taken for event_id in mine]
    assert sorted(every) == sorted(ids)  # all taken, none twice
    assert sum(1 for mine in taken if mine) > 1  # they did race
    assert set(ScheduledEvent.objects.values_list("status", flat=True)) == {ScheduledEvent.SENDING}


def test_rows_published_by_a_dispatcher_that_died_are_not_published_twice(redis_settings: None) -> None:
    ids = due_rows("crash", 50)
    taken = scheduling._take_due(100)
    run_sync(apublish_many, [scheduling.publish_request(row) for row in taken])  # then it "dies"
    assert scheduling.dispatch() == 0  # their lease holds them
    time.sleep(1.2)
    assert scheduling.dispatch() == 50  # taken again once the lease ran out, marked delivered
    page = run_sync(get_history().read, "crash", 0, 1000)
    published = [frame for _, frame in page.frames]
    assert len(published) == 50 and all(f'"id":"{event_id}"' in "".join(published) for event_id in ids)
    assert set(ScheduledEvent.objects.values_list("status", flat=True)) == {ScheduledEvent.DELIVERED}


async def test_a_database_that_fails_refuses_the_schedule_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import OperationalError

    from realtime.publish import PublishRequest, Unavailable

    def down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("the database went away")

    monkeypatch.setattr(scheduling, "_schedule", down)
    later = scheduling.Later(deliver_at=timezone.now() + timedelta(minutes=5))
    with pytest.raises(Unavailable, match="database is unavailable"):
        await scheduling.ahold(PublishRequest(["news"], "e"), later)
