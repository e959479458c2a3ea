"""History backends: the in-process one and Redis (a real server the session starts)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import channel_layers
from django.core.exceptions import ImproperlyConfigured

from realtime.conf import notifier_settings
from realtime.frames import event_template
from realtime.history import Append, History, MemoryHistory, Position, RedisHistory, get_history
from realtime.publish import apublish

from .support import RedisServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_settings(settings: object, redis_server: RedisServer) -> Iterator[RedisServer]:
    settings.NOTIFIER = {**settings.NOTIFIER, "REDIS_URL": redis_server.url}  # type: ignore[attr-defined]
    yield redis_server


@pytest.fixture(params=["memory", "redis"])
def history(request: pytest.FixtureRequest) -> History:
    if request.param == "memory":
        return MemoryHistory()
    request.getfixturevalue("redis_settings")
    return RedisHistory(f"test{uuid.uuid4().hex[:6]}")


def item(channel: str, n: int, size: int = 100, ttl: int = 60) -> Append:
    return Append(channel, event_template(channel, f"id{n}", "e", str(n), 1.0), size, ttl)


async def test_offsets_start_at_one_and_frames_carry_them(history: History) -> None:
    stored = await history.append([item("a", 1), item("b", 1), item("a", 2)])
    assert [(s.position.offset) for s in stored] == [1, 1, 2]
    assert stored[0].position.epoch == stored[2].position.epoch != ""
    assert '"offset":2,' in stored[2].frame
    page = await history.read("a", after=0, limit=10)
    assert [offset for offset, _ in page.frames] == [1, 2]
    assert page.frames[1][1] == stored[2].frame
    assert page.position == stored[2].position and page.complete


async def test_concurrent_appends_get_unique_contiguous_offsets(history: History) -> None:
    results = await asyncio.gather(*(history.append([item("c", n)]) for n in range(200)))
    offsets = sorted(stored[0].position.offset for stored in results)
    assert offsets == list(range(1, 201))


async def test_read_after_and_limit(history: History) -> None:
    for n in range(10):
        await history.append([item("d", n)])
    page = await history.read("d", after=4, limit=3)
    assert [offset for offset, _ in page.frames] == [5, 6, 7]
    assert page.position.offset == 10 and page.complete
    assert (await history.read("d", after=10, limit=3)).frames == []


async def test_trimmed_history_is_reported_incomplete(history: History) -> None:
    for n in range(10):
        await history.append([item("e", n, size=3)])
    assert (await history.read("e", after=2, limit=100)).complete is False
    page = await history.read("e", after=7, limit=100)
    assert page.complete and [o for o, _ in page.frames] == [8, 9, 10]


async def test_unknown_channel(history: History) -> None:
    page = await history.read("never", after=0, limit=5)
    assert page.position.offset == 0 and page.frames == [] and page.complete
    assert (await history.read("never", after=3, limit=5)).complete is False
    assert (await history.positions(["never"]))[0].offset == 0


async def test_positions_in_one_call(history: History) -> None:
    await history.append([item("p", 1), item("p", 2), item("q", 1)])
    positions = await history.positions(["p", "q", "r"])
    assert [p.offset for p in positions] == [2, 1, 0]


async def test_memory_history_expires_with_a_new_epoch() -> None:
    clock = FakeClock()
    history = MemoryHistory(clock=clock)
    first = (await history.append([item("t", 1, ttl=10)]))[0].position
    clock.now += 11
    again = (await history.append([item("t", 2, ttl=10)]))[0].position
    assert again.offset == 1 and again.epoch != first.epoch


async def test_redis_flush_starts_a_new_epoch(redis_settings: RedisServer) -> None:
    history = RedisHistory("flush")
    first = (await history.append([item("f", 1)]))[0].position
    redis_settings.command("FLUSHALL")
    again = (await history.append([item("f", 2)]))[0].position
    assert again.offset == 1 and again.epoch != first.epoch


async def test_redis_history_sets_ttl(redis_settings: RedisServer) -> None:
    history = RedisHistory("ttl")
    await history.append([item("g", 1, ttl=30)])
    with redis_settings.client() as client:
        assert 0 < client.ttl("ttl:h:g:log") <= 30 and 0 < client.ttl("ttl:h:g:meta") <= 30


async def test_a_batch_keeps_each_channels_order_and_trims_to_size(history: History) -> None:
    items = [item("m", n, size=5) if n % 2 else item("n", n) for n in range(12)]
    stored = await history.append(items)
    assert [s.position.offset for s in stored] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    page = await history.read("m", after=0, limit=100)
    assert [o for o, _ in page.frames] == [2, 3, 4, 5, 6] and not page.complete
    assert page.frames[-1][1] == stored[11].frame


async def test_redis_history_reloads_its_script_after_script_flush(redis_settings: RedisServer) -> None:
    history = RedisHistory("noscript")
    await history.append([item("s", 1)])
    redis_settings.command("SCRIPT", "FLUSH")
    stored = await history.append([item("s", 2), item("t", 1)])
    assert [s.position.offset for s in stored] == [2, 1]


async def test_reading_after_an_offset_beyond_any_is_empty_not_an_error(history: History) -> None:
    await history.append([item("big", 1)])
    page = await history.read("big", after=897857134864675494690816, limit=10)  # found by schemathesis
    assert page.frames == [] and page.complete and page.position.offset == 1


@pytest.fixture
def namespaces(settings: Any, redis_server: RedisServer) -> Iterator[RedisServer]:
    """Publishing through Redis history, with per-namespace history policies."""
    channel_layers.backends.pop("default", None)  # a layer bound to another test's loop
    settings.NOTIFIER = {
        **settings.NOTIFIER,
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": f"ns{uuid.uuid4().hex[:6]}",
        "NAMESPACES": {
            "small": {"history_size": 3, "history_ttl_secs": 30},
            "none": {"history_size": 0},
        },
    }
    yield redis_server
    channel_layers.backends.pop("default", None)


def ttls(server: RedisServer, channel: str) -> list[int]:
    prefix = f"{notifier_settings.REDIS_PREFIX}:h:{channel}"
    with server.client() as client:
        return [int(client.ttl(f"{prefix}:meta")), int(client.ttl(f"{prefix}:log"))]


async def test_namespace_history_size_and_ttl_are_applied(namespaces: RedisServer) -> None:
    for n in range(5):
        await apublish(["small:a", "plain"], "e", n)
    history = get_history()
    small = await history.read("small:a", after=0, limit=100)
    assert [o for o, _ in small.frames] == [3, 4, 5] and not small.complete
    assert all(0 < ttl <= 30 for ttl in ttls(namespaces, "small:a"))
    plain = await history.read("plain", after=0, limit=100)  # the defaults: 1,000 events, a day
    assert [o for o, _ in plain.frames] == [1, 2, 3, 4, 5] and plain.complete
    assert all(30 < ttl <= 24 * 3600 for ttl in ttls(namespaces, "plain"))


async def test_a_history_size_of_zero_keeps_offsets_but_no_events(namespaces: RedisServer) -> None:
    for n in range(3):
        result = await apublish(["none:a"], "e", n)
    assert result.channels["none:a"].offset == 3
    page = await get_history().read("none:a", after=0, limit=100)
    assert page.frames == [] and page.position.offset == 3 and not page.complete
    assert all(3600 < ttl <= 24 * 3600 for ttl in ttls(namespaces, "none:a"))


@pytest.mark.parametrize("policy", [{"history_ttl_secs": 0}, {"history_size": -1}, {"history_size": "9"}])
def test_a_history_policy_that_cannot_work_stops_the_process(settings: Any, policy: dict[str, Any]) -> None:
    """Refused when the namespaces are merged (at start, realtime.apps), not at the first publish."""
    from realtime.channels import policies

    settings.NOTIFIER = {**settings.NOTIFIER, "NAMESPACES": {"bad": policy}}
    with pytest.raises(ImproperlyConfigured, match="'bad:': history"):
        policies()


# -- history that went backwards (issue 11): another master wrote it, or a hub is ahead of it ----


@pytest.fixture
def redis_history(redis_settings: RedisServer) -> RedisHistory:
    return RedisHistory(f"test{uuid.uuid4().hex[:6]}")


def written_by(server: RedisServer, history: RedisHistory, channel: str, master: str | None) -> None:
    """Make the channel's meta look written by `master` (None: by a release that recorded none)."""
    meta = f"{history._prefix}:h:{channel}:meta"
    with server.client() as client:
        if master is None:
            client.hdel(meta, "master")
        else:
            client.hset(meta, "master", master)


async def test_history_written_under_another_master_is_not_continued(
    redis_history: RedisHistory, redis_server: RedisServer
) -> None:
    (first,) = await redis_history.append([item("f", 1)])
    await redis_history.append([item("f", 2)])
    written_by(redis_server, redis_history, "f", "0" * 40)  # as a promoted replica's copy would say
    (after,) = await redis_history.append([item("f", 3)])
    assert after.position.offset == 1 and after.position.epoch != first.position.epoch
    page = await redis_history.read("f", after=0, limit=10)
    assert [offset for offset, _ in page.frames] == [1]  # the old epoch's entries are gone with it
    (again,) = await redis_history.append([item("f", 4)])
    assert again.position == Position(2, after.position.epoch)  # now recorded: carries on


async def test_meta_of_an_earlier_release_adopts_the_current_master(
    redis_history: RedisHistory, redis_server: RedisServer
) -> None:
    (first,) = await redis_history.append([item("g", 1)])
    written_by(redis_server, redis_history, "g", None)
    (second,) = await redis_history.append([item("g", 2)])
    assert (second.position.offset, second.position.epoch) == (2, first.position.epoch)


async def test_check_moves_only_history_that_went_backwards(
    redis_history: RedisHistory, redis_server: RedisServer
) -> None:
    for n in range(3):
        await redis_history.append([item(ch, n) for ch in ("same", "behind", "foreign")])
    same, behind, foreign = await redis_history.positions(["same", "behind", "foreign"])
    written_by(redis_server, redis_history, "foreign", "f" * 40)
    delivered = [
        ("same", same),
        ("behind", Position(5, behind.epoch)),  # a hub delivered 5: history says 3
        ("foreign", foreign),
        ("nothing", Position(0, "")),
    ]
    now = await redis_history.check(delivered)
    assert now[0] == same
    assert now[1].offset == 0 and now[1].epoch not in ("", behind.epoch)
    assert now[2].offset == 0 and now[2].epoch not in ("", foreign.epoch)
    assert now[3] == Position(0, "")
    assert await redis_history.check(delivered[2:3]) == [now[2]]  # moved once, not at every check
    assert await redis_history.positions(["behind", "foreign"]) == now[1:3]
