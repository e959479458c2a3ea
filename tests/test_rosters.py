"""Rosters (a user's connections, a channel's processes): first holder, last one gone after a
debounce, names whose holders died. The Redis one against a real server, the in-process one
for the embedded mode, held to the same answers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from realtime.redis import get_redis
from realtime.rosters import ADDED, BECAME_HELD, REFUSED, MemoryRoster, RedisRoster, Roster

from .support import RedisServer


@pytest.fixture
def redis_settings(settings: object, redis_server: RedisServer) -> Iterator[None]:
    settings.NOTIFIER = {**settings.NOTIFIER, "REDIS_URL": redis_server.url, "PRESENCE_TTL_SECS": 1}  # type: ignore[attr-defined]
    yield


@pytest.fixture(params=["memory", "redis"])
def roster(request: pytest.FixtureRequest) -> Roster:
    if request.param == "memory":
        return MemoryRoster()
    request.getfixturevalue("redis_settings")
    return RedisRoster(f"test{uuid.uuid4().hex[:6]}", "h", "e", "registry")


async def test_first_holder_and_last_one_gone_are_told_once(roster: Roster) -> None:
    assert await roster.add("n", "a") == BECAME_HELD
    assert await roster.add("n", "b") == ADDED
    assert await roster.remove("n", "a") is False
    assert await roster.remove("n", "b") is True
    assert await roster.went_empty("n") is True
    assert await roster.went_empty("n") is False  # told once
    assert await roster.add("n", "c") == BECAME_HELD  # held again after it was told empty


async def test_a_holder_back_within_the_debounce_is_neither(roster: Roster) -> None:
    assert await roster.add("n", "a") == BECAME_HELD
    assert await roster.remove("n", "a") is True
    assert await roster.add("n", "a2") == ADDED  # a reload: not held anew
    assert await roster.went_empty("n") is False  # the check after the debounce: not empty
    assert await roster.remove("n", "a2") is True
    assert await roster.went_empty("n") is True  # still told held, so now told empty


async def test_a_limit_refuses_one_holder_too_many(roster: Roster) -> None:
    assert [await roster.add("n", h, limit=2) for h in "abc"] == [BECAME_HELD, ADDED, REFUSED]
    assert await roster.held(["n", "other"]) == {"n"}
    assert await roster.add("n", "d") == ADDED  # no limit


async def test_names_whose_holders_stopped_refreshing_are_gone_once(redis_settings: None) -> None:
    roster = RedisRoster(f"test{uuid.uuid4().hex[:6]}", "h", "e", "registry")
    assert await roster.add("dead", "a") == BECAME_HELD
    assert await roster.add("alive", "b") == BECAME_HELD
    assert await roster.add("leaving", "c") == BECAME_HELD
    assert await roster.remove("leaving", "c") is True  # its own check is due: not the sweep's
    assert await roster.gone(100) == []
    await asyncio.sleep(0.6)
    await roster.refresh([("alive", "b")])
    await asyncio.sleep(0.6)  # past the 1 s ttl for "dead"'s holder and registry entry
    assert await roster.gone(100) == ["dead"]
    assert await roster.gone(100) == []
    assert await roster.held(["dead", "alive"]) == {"alive"}
    assert await roster.went_empty("leaving") is True


async def test_a_refresh_of_thousands_of_holders_scores_each_and_leaves_the_registry_unexpiring(
    redis_settings: None,
) -> None:
    """More entries than one script call takes (redis.KEYS_PER_SCRIPT_CALL): every holder is
    refreshed, its set expires, the registry does not."""
    prefix = f"test{uuid.uuid4().hex[:6]}"
    roster = RedisRoster(prefix, "h", "e", "registry")
    held = [(f"n{i % 700}", f"h{i}") for i in range(1_200)]
    before = time.time()
    await roster.refresh(held)
    redis = get_redis()
    for name in ("n0", "n499", "n699"):
        members = await redis.zrange(f"{prefix}:h:{name}", 0, -1, withscores=True)
        assert {m.decode() for m, _ in members} == {h for n, h in held if n == name}
        assert all(score >= before + 1 for _, score in members)  # PRESENCE_TTL_SECS = 1
        assert await redis.ttl(f"{prefix}:h:{name}") > 0
    assert await redis.zcard(f"{prefix}:registry") == 700
    assert await redis.ttl(f"{prefix}:registry") == -1
