"""API keys on the publish route (api/fast.py), without a database query per request.

Looking a key up in the database costs a query and, under ASGI, a thread hop on every request
(DESIGN §8). The publish route keeps the keys it has seen in process memory instead, and each
request reads one Redis counter, the key generation, in the same round trip that counts it
against its key's rate (api/rates.py). Every change to a key (revoke, scopes, channels, delete) bumps the
generation when its transaction commits, and a process that sees a new generation forgets
every key it knew, so a revocation is seen by every process at its next request.

A change made where Redis is not reachable (a script run without REDIS_URL, a raw SQL update)
cannot bump the generation; entries are also forgotten after KEY_CACHE_SECS, which bounds how
long such a change takes to be seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

from asgiref.sync import sync_to_async
from django.db import close_old_connections, transaction
from redis.exceptions import RedisError

from realtime.bridge import run_sync
from realtime.conf import notifier_settings
from realtime.publish import Unavailable
from realtime.redis import get_redis

from . import rates
from .models import ApiKey
from .rates import Window, generation_key

logger = logging.getLogger(__name__)

KEY_CACHE_SECS = 5.0


class Checked(NamedTuple):
    """A request's key (None: unknown or revoked) and its rate window, this request counted."""

    key: ApiKey | None
    window: Window


class KeyCache:
    """The keys this process has seen, valid for one key generation and KEY_CACHE_SECS.

    In the embedded mode (one process, no Redis to announce changes) every request reads its
    key from the database, so a change is seen at once.
    """

    def __init__(self) -> None:
        self._generation: bytes | None = None
        self._keys: dict[str, tuple[ApiKey, float]] = {}  # key hash -> (record, valid until)
        self._loading: dict[str, asyncio.Future[ApiKey | None]] = {}

    async def check(self, key_hash: str, cost: int) -> Checked:
        """Count `cost` against the key's current rate window and return the key's record.

        An unknown key counts against a window no valid key uses; nothing else reads it.
        """
        counted = await rates.count(key_hash, cost)
        if notifier_settings.embedded:
            return Checked(await _load(key_hash), counted.window)
        if counted.generation != self._generation:
            self._keys.clear()
            self._generation = counted.generation
        return Checked(await self._get(key_hash), counted.window)

    async def find(self, key_hash: str) -> ApiKey | None:
        """The key's record without counting anything (minting tokens): through the cache
        while Redis answers, from the database when it does not, as a mint needs no Redis."""
        try:
            return (await self.check(key_hash, 0)).key
        except Unavailable:
            return await _load(key_hash)

    async def _get(self, key_hash: str) -> ApiKey | None:
        cached = self._keys.get(key_hash)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        loading = self._loading.get(key_hash)
        if loading is None:  # one database query however many requests wait for this key
            loading = self._loading[key_hash] = asyncio.ensure_future(_load(key_hash))
            loading.add_done_callback(lambda _: self._loading.pop(key_hash, None))
        generation = self._generation
        record = await asyncio.shield(loading)
        if record is not None and generation == self._generation:
            self._keys[key_hash] = (record, time.monotonic() + KEY_CACHE_SECS)
        return record


@sync_to_async(thread_sensitive=False)
def _load(key_hash: str) -> ApiKey | None:
    close_old_connections()
    try:
        return ApiKey.objects.active().filter(key_hash=key_hash).first()
    finally:
        close_old_connections()


def bump_generation(**_: Any) -> None:
    """Tell every process that keys changed (after the change is committed)."""
    transaction.on_commit(_bump)


def _bump() -> None:
    if notifier_settings.embedded:
        return  # the publish route reads keys from the database (api/fast.py)
    try:
        run_sync(_incr_generation)
    except (RedisError, OSError) as exc:
        logger.warning(
            "API key change not announced (Redis unreachable: %s); processes see it within %ss", exc, KEY_CACHE_SECS
        )


async def _incr_generation() -> None:
    await get_redis().incr(generation_key())
