"""Idempotent publish: one event per (publisher, key) within the window, on both stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import channel_layers
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.history import get_history
from realtime.idempotency import MemoryIdempotencyStore, RedisIdempotencyStore
from realtime.publish import NotReplicated, PublishRequest, StoredNotSent, Unavailable, apublish, apublish_many

from .support import RedisServer


@pytest.fixture(params=["embedded", "redis"])
def mode(request: pytest.FixtureRequest, settings: Any) -> Iterator[str]:
    channel_layers.backends.pop("default", None)
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        settings.NOTIFIER = {**settings.NOTIFIER, "REDIS_URL": server.url, "REDIS_PREFIX": uuid.uuid4().hex[:8]}
        settings.CHANNEL_LAYERS = {
            "default": {"BACKEND": "realtime.broker.PubSubLayer", "CONFIG": {"hosts": [server.url]}}
        }
        channel_layers.backends.clear()
    yield request.param
    channel_layers.backends.clear()


async def offsets(channel: str) -> list[int]:
    page = await get_history().read(channel, after=0, limit=100)
    return [offset for offset, _ in page.frames]


async def test_same_key_same_publisher_publishes_once(mode: str) -> None:
    channel = f"idem.{uuid.uuid4().hex[:8]}"
    first = await apublish([channel], "e", 1, idempotency_key="k1", publisher="key:1")
    again = await apublish([channel], "e", 2, idempotency_key="k1", publisher="key:1")
    assert again == first
    assert await offsets(channel) == [1]


async def test_other_publisher_or_other_key_publishes_again(mode: str) -> None:
    channel = f"idem.{uuid.uuid4().hex[:8]}"
    a = await apublish([channel], "e", idempotency_key="k", publisher="key:1")
    b = await apublish([channel], "e", idempotency_key="k", publisher="key:2")
    c = await apublish([channel], "e", idempotency_key="other", publisher="key:1")
    assert len({a.id, b.id, c.id}) == 3
    assert await offsets(channel) == [1, 2, 3]


async def test_concurrent_duplicates_publish_once(mode: str) -> None:
    channel = f"idem.{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(
        *(apublish([channel], "e", n, idempotency_key="race", publisher="p") for n in range(20))
    )
    assert len({r.id for r in results}) == 1
    assert await offsets(channel) == [1]


async def test_a_failed_publish_releases_its_key(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import realtime.publish as publish_module

    channel = f"idem.{uuid.uuid4().hex[:8]}"
    original = publish_module._store_and_send

    async def failing(*args: Any) -> Any:
        raise Unavailable("down")

    monkeypatch.setattr(publish_module, "_store_and_send", failing)
    with pytest.raises(Unavailable):
        await apublish([channel], "e", idempotency_key="retry-me", publisher="p")
    monkeypatch.setattr(publish_module, "_store_and_send", original)
    result = await apublish([channel], "e", idempotency_key="retry-me", publisher="p")
    assert result.channels[channel].offset == 1


async def test_window_expiry_in_memory() -> None:
    now = [0.0]
    store = MemoryIdempotencyStore(clock=lambda: now[0])
    assert await store.claim("k") is None
    await store.complete("k", '{"id": "x", "channels": {}}', 300)
    assert await store.claim("k") == '{"id": "x", "channels": {}}'
    now[0] = 301
    assert await store.claim("k") is None


def test_redis_store_is_the_production_store(settings: Any) -> None:
    from realtime.idempotency import get_store

    settings.NOTIFIER = {**settings.NOTIFIER, "REDIS_URL": "redis://127.0.0.1:1/0"}
    assert isinstance(get_store(), RedisIdempotencyStore)


async def test_an_event_stored_but_not_sent_keeps_its_key_so_a_retry_adds_no_copy(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import realtime.broker as broker_module

    channel = f"idem.{uuid.uuid4().hex[:8]}"
    original = broker_module.send_messages
    calls = []

    async def fails_once(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise RedisConnectionError("the layer's connection dropped")
        await original(*args)

    monkeypatch.setattr(broker_module, "send_messages", fails_once)
    with pytest.raises(Unavailable) as failed:  # still not acknowledged: a 503
        await apublish([channel], "e", 1, idempotency_key="celery-retry", publisher="celery")
    assert failed.value.code == "unavailable" and failed.value.details["stored"] is True
    assert await offsets(channel) == [1]  # stored: the hubs deliver it from history
    retried = await apublish([channel], "e", 1, idempotency_key="celery-retry", publisher="celery")
    assert retried.as_dict() == {k: v for k, v in failed.value.details.items() if k != "stored"}
    assert await offsets(channel) == [1]  # the retry published no second copy
    assert len(calls) == 1


async def test_a_batch_stored_but_not_sent_reports_each_events_position(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import realtime.broker as broker_module

    async def down(*args: Any) -> None:
        raise RedisConnectionError("down")

    monkeypatch.setattr(broker_module, "send_messages", down)
    channel = f"idem.{uuid.uuid4().hex[:8]}"
    answers = await apublish_many([PublishRequest([channel], "e", n) for n in range(3)])
    assert all(isinstance(a, StoredNotSent) for a in answers)
    assert [a.result.channels[channel].offset for a in answers if isinstance(a, StoredNotSent)] == [1, 2, 3]


async def test_with_replica_acks_a_publish_no_replica_confirmed_is_never_answered_202(
    mode: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's Redis has no replica: WAIT 1 always answers 0. Whether the live send then
    works or fails, the publish and every retry with its key answer not_replicated."""
    if mode != "redis":
        return  # replica acks need Redis: the embedded mode has no replicas (and ignores them)
    import realtime.broker as broker_module

    settings.NOTIFIER = {**settings.NOTIFIER, "REPLICA_ACKS": 1, "REPLICA_ACK_TIMEOUT_MS": 50}
    channel = f"idem.{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotReplicated) as first:
        await apublish([channel], "e", 1, idempotency_key="acks", publisher="p")
    assert first.value.details["stored"] is True and first.value.details["replicated"] is False

    async def down(*args: Any) -> None:
        raise RedisConnectionError("down")

    monkeypatch.setattr(broker_module, "send_messages", down)
    with pytest.raises(NotReplicated):  # stored, not sent, not replicated: still not acknowledged
        await apublish([channel], "e", 2, idempotency_key="acks-down", publisher="p")
    for key in ("acks", "acks-down"):
        with pytest.raises(NotReplicated) as again:
            await apublish([channel], "e", 3, idempotency_key=key, publisher="p")
        assert again.value.code == "not_replicated"
    assert await offsets(channel) == [1, 2]  # no retry stored a second copy
    (batch,) = await apublish_many([PublishRequest([channel], "e", 4)])
    assert isinstance(batch, NotReplicated)


async def test_a_batch_claims_and_records_its_keys_together_and_publishes_each_once(mode: str) -> None:
    channel = f"idem.{uuid.uuid4().hex[:8]}"
    before = await apublish([channel], "e", "before", idempotency_key="old", publisher="p")
    keys = ["a", None, "old", "a", "b", None]
    requests = [PublishRequest([channel], "e", n, idempotency_key=k, publisher="p") for n, k in enumerate(keys)]
    answers = await apublish_many(requests)
    assert answers[2] == before  # answered again, not published
    assert answers[3] == answers[0]  # the same key twice in one batch: one event
    assert len({a.id for a in answers}) == 5  # type: ignore[union-attr]
    assert await offsets(channel) == [1, 2, 3, 4, 5]  # before, a, None, b, None
    retried = await apublish_many(requests)
    keyed = [n for n, key in enumerate(keys) if key]
    assert [retried[n] for n in keyed] == [answers[n] for n in keyed]
    assert await offsets(channel) == [1, 2, 3, 4, 5, 6, 7]  # only the two without a key again


async def test_a_batch_whose_store_failed_releases_its_keys(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import realtime.publish as publish_module

    async def down(*args: Any) -> None:
        raise RedisConnectionError("down")

    channel = f"idem.{uuid.uuid4().hex[:8]}"
    history = get_history()
    monkeypatch.setattr(type(history), "append", down)
    requests = [PublishRequest([channel], "e", n, idempotency_key=f"k{n}", publisher="p") for n in range(3)]
    assert all(isinstance(a, Unavailable) for a in await publish_module.apublish_many(requests))
    monkeypatch.undo()
    answers = await apublish_many(requests)  # nothing was stored: the retry publishes
    assert all(not isinstance(a, Exception) for a in answers)
    assert await offsets(channel) == [1, 2, 3]
