"""API keys and the per-key publish rate on the hot publish route, without a database query.

Looking a key up in the database costs a query and, under ASGI, a thread hop on every request
(DESIGN §8). The publish route keeps the keys it has seen in process memory instead, and each
request reads one Redis counter, the key generation, in the same round trip that counts it
against its key's rate. Every change to a key (revoke, scopes, channels, delete) bumps the
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
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections, transaction
from redis.exceptions import RedisError

from realtime.bridge import run_sync
from realtime.conf import notifier_settings
from realtime.publish import Unavailable
from realtime.redis import LuaScript, get_redis

from .models import ApiKey
from .throttling import parse_rate

logger = logging.getLogger(__name__)

KEY_CACHE_SECS = 5.0

# KEYS: the key generation, this key's counter for the current window. ARGV: cost, window TTL.
_GENERATION_AND_RATE = LuaScript("""
local used = redis.call('INCRBY', KEYS[2], ARGV[1])
if used == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return {used, redis.call('GET', KEYS[1]) or false}
""")


def generation_key() -> str:
    return f"{notifier_settings.REDIS_PREFIX}:apikeys:generation"


@dataclass(frozen=True)
class Checked:
    """A request's key (None: unknown or revoked) and how much of its rate window it has used."""

    key: ApiKey | None
    used: int
    limit: int
    retry_after: float  # seconds until the window ends


class KeyCache:
    """The keys this process has seen, valid for one key generation and KEY_CACHE_SECS."""

    def __init__(self) -> None:
        self._generation: bytes | None = None
        self._keys: dict[str, tuple[ApiKey, float]] = {}  # key hash -> (record, valid until)
        self._loading: dict[str, asyncio.Future[ApiKey | None]] = {}

    async def check(self, key_hash: str, cost: int) -> Checked:
        """Count `cost` against the key's current rate window and return the key's record.

        An unknown key counts against a window no valid key uses; nothing else reads it.
        """
        limit, period = parse_rate(notifier_settings.PUBLISH_RATE_PER_KEY)
        now = time.time()
        window = int(now // period)
        rate_key = f"{notifier_settings.REDIS_PREFIX}:rate:{key_hash[:32]}:{window}"
        try:
            used, generation = await _GENERATION_AND_RATE.run([generation_key(), rate_key], [cost, period + 1])
        except (RedisError, OSError) as exc:  # nothing could be published either
            raise Unavailable("Redis is unavailable; the event was not published") from exc
        if generation != self._generation:
            self._keys.clear()
            self._generation = generation
        return Checked(await self._get(key_hash), int(used), limit, (window + 1) * period - now)

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
