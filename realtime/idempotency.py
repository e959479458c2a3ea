"""Idempotent publishing: the same key from the same publisher within the window answers the
first publish's result again and delivers nothing new, so client and Celery retries are safe.

A key is claimed atomically (SET NX) before publishing, with a short claim TTL in case the
publisher dies mid-way; the answer then replaces the claim for the whole window. A concurrent
duplicate waits for the answer rather than publishing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .conf import notifier_settings
from .redis import cluster_mode, get_redis

PENDING = "pending"
CLAIM_TTL_SECS = 30  # how long a claim blocks duplicates if its publisher dies before answering
WAIT_FOR_ANSWER_SECS = 10.0
POLL_SECS = 0.05


class StillPending(Exception):
    """A duplicate arrived while the first publish with this key has not finished."""


@dataclass(frozen=True)
class Claim:
    """Either the right to publish (`answer is None`) or the first publish's answer."""

    answer: dict[str, Any] | None


class IdempotencyStore(Protocol):
    async def claim(self, key: str) -> str | None: ...

    async def complete(self, key: str, answer: str, window_secs: int) -> None: ...

    async def release(self, key: str) -> None: ...

    async def claim_many(self, keys: list[str]) -> list[str | None]:
        """`claim` for each key, in one round trip: None for the keys now ours, else the value
        (the answer, or PENDING, also for a claim that expired meanwhile: claim it alone)."""
        ...

    async def complete_many(self, answers: list[tuple[str, str]], window_secs: int) -> None: ...

    async def release_many(self, keys: list[str]) -> None: ...


def store_key(publisher: str, idempotency_key: str) -> str:
    digest = hashlib.sha256(f"{publisher}\0{idempotency_key}".encode()).hexdigest()
    return f"{notifier_settings.REDIS_PREFIX}:idem:{digest}"


class RedisIdempotencyStore:
    async def claim(self, key: str) -> str | None:
        """None if we now own the key, else its current value (PENDING or the answer)."""
        redis = get_redis()
        if await redis.set(key, PENDING, nx=True, ex=CLAIM_TTL_SECS):
            return None
        value = await redis.get(key)
        if value is None:  # expired between the two calls: try once more
            return None if await redis.set(key, PENDING, nx=True, ex=CLAIM_TTL_SECS) else PENDING
        return value.decode() if isinstance(value, bytes) else str(value)

    async def complete(self, key: str, answer: str, window_secs: int) -> None:
        await get_redis().set(key, answer, ex=window_secs)

    async def release(self, key: str) -> None:
        await get_redis().delete(key)

    async def claim_many(self, keys: list[str]) -> list[str | None]:
        redis = get_redis()
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, PENDING, nx=True, ex=CLAIM_TTL_SECS)
            won = await pipe.execute()
        taken = [key for key, ours in zip(keys, won, strict=True) if not ours]
        # MGET takes one slot's keys only; RedisCluster's mget_nonatomic splits them by slot.
        mget = redis.mget_nonatomic if cluster_mode() else redis.mget
        values = dict(zip(taken, await mget(taken), strict=True)) if taken else {}
        found: list[str | None] = []
        for key, ours in zip(keys, won, strict=True):
            value = values.get(key)
            found.append(None if ours else (value.decode() if isinstance(value, bytes) else value or PENDING))
        return found

    async def complete_many(self, answers: list[tuple[str, str]], window_secs: int) -> None:
        async with get_redis().pipeline(transaction=False) as pipe:
            for key, answer in answers:
                pipe.set(key, answer, ex=window_secs)
            await pipe.execute()

    async def release_many(self, keys: list[str]) -> None:
        if keys:
            await get_redis().delete(*keys)  # RedisCluster splits a DEL by slot


class MemoryIdempotencyStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, tuple[str, float]] = {}
        self.clock = clock

    async def claim(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] > self.clock():
            return entry[0]
        self._entries[key] = (PENDING, self.clock() + CLAIM_TTL_SECS)
        return None

    async def complete(self, key: str, answer: str, window_secs: int) -> None:
        self._entries[key] = (answer, self.clock() + window_secs)

    async def release(self, key: str) -> None:
        self._entries.pop(key, None)

    async def claim_many(self, keys: list[str]) -> list[str | None]:
        return [await self.claim(key) for key in keys]

    async def complete_many(self, answers: list[tuple[str, str]], window_secs: int) -> None:
        for key, answer in answers:
            await self.complete(key, answer, window_secs)

    async def release_many(self, keys: list[str]) -> None:
        for key in keys:
            await self.release(key)


_memory_store = MemoryIdempotencyStore()


def get_store() -> IdempotencyStore:
    return _memory_store if notifier_settings.embedded else RedisIdempotencyStore()


async def claim(store: IdempotencyStore, key: str) -> Claim:
    """Claim `key`, or wait for the answer of whoever claimed it first."""
    deadline = time.monotonic() + WAIT_FOR_ANSWER_SECS
    while True:
        value = await store.claim(key)
        if value is None:
            return Claim(None)
        if value != PENDING:
            answer: dict[str, Any] = json.loads(value)
            return Claim(answer)
        if time.monotonic() > deadline:
            raise StillPending(key)
        await asyncio.sleep(POLL_SECS)
