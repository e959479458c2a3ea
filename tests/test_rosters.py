"""Rosters (a user's connections, a channel's processes): first holder, last one gone after a
debounce, names whose holders died. The Redis one against a real server, the in-process one
for the embedded mode, held to the same answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

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
