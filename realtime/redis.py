"""One Redis client per event loop, with a deliberately sized, blocking connection pool.

redis-py 8 raises MaxConnectionsError when a plain pool is exhausted (DESIGN §8); a
BlockingConnectionPool waits for a free connection instead, so a burst queues rather than fails.

With Sentinel (`settings.REDIS_SENTINEL`, from NOTIFIER_REDIS_SENTINELS), the pool asks the
Sentinels for the current master before each new connection, and after a failover reconnects to
the new one; REDIS_URL then supplies only the db number and credentials.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.sentinel
from django.conf import settings
from redis import asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import NoScriptError

from .conf import notifier_settings

logger = logging.getLogger(__name__)

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's master discovery with the blocking pool's wait for a free connection."""


class SentinelCachePool(redis.sentinel.SentinelConnectionPool):
    """Django's RedisCache `pool_class` with Sentinel: the cache's LOCATION (REDIS_URL) host is
    ignored, the master comes from `settings.REDIS_SENTINEL`."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SentinelCachePool:
        sentinel = settings.REDIS_SENTINEL
        assert sentinel is not None, "SentinelCachePool needs NOTIFIER_REDIS_SENTINELS"
        manager = redis.sentinel.Sentinel(sentinel["sentinels"], sentinel_kwargs=sentinel["sentinel_kwargs"])
        return cls(sentinel["master_name"], manager, **sentinel["master_kwargs"], **options)


def get_redis() -> aioredis.Redis:
    """The Redis client of the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        options: dict[str, Any] = {
            "max_connections": notifier_settings.REDIS_MAX_CONNECTIONS,
            "timeout": notifier_settings.REDIS_SOCKET_TIMEOUT_SECS,
            "socket_connect_timeout": notifier_settings.REDIS_CONNECT_TIMEOUT_SECS,
            "socket_timeout": notifier_settings.REDIS_SOCKET_TIMEOUT_SECS,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "client_name": f"notifier-{os.getpid()}",  # lets operators (and tests) tell processes apart
        }
        sentinel: dict[str, Any] | None = settings.REDIS_SENTINEL
        if sentinel is None:
            pool = aioredis.BlockingConnectionPool.from_url(notifier_settings.REDIS_URL, **options)
            client = aioredis.Redis(connection_pool=pool)
        else:
            manager = Sentinel(sentinel["sentinels"], sentinel_kwargs=sentinel["sentinel_kwargs"])
            client = manager.master_for(
                sentinel["master_name"],
                connection_pool_class=BlockingSentinelPool,
                **sentinel["master_kwargs"],
                **options,
            )
        _clients[loop] = client
    return client


Call = tuple[Sequence[str], Sequence[Any]]  # (keys, args) of one script call


class LuaScript:
    """A Lua script run with EVALSHA, and loaded again when Redis answers NOSCRIPT (a restarted
    or flushed Redis).

    redis-py's `Script`, used in a pipeline, sends `SCRIPT EXISTS` before every `execute`: one
    more round trip per publish. Here a pipeline holds one call per key set; a call refused with
    NOSCRIPT ran nothing, so running it again after `SCRIPT LOAD` is safe.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    async def run(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        redis = get_redis()
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Every call in one pipelined round trip (two after a NOSCRIPT); results in call order."""
        results, _ = await self.run_many_replicated(calls, Replicas(0, 0))
        return results

    async def run_many_replicated(self, calls: Sequence[Call], replicas: Replicas) -> tuple[list[Any], int]:
        """`run_many`, then (when `replicas.count` > 0) WAIT in the same pipeline, so on the same
        connection: the results, and how many replicas acknowledged the writes (the fewest of
        the two pipelines after a NOSCRIPT)."""
        redis = get_redis()
        results, acked = await self._pipelined(redis, calls, replicas)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await redis.script_load(self.source)
            retried, acked_again = await self._pipelined(redis, [calls[i] for i in missing], replicas)
            acked = min(acked, acked_again)
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results, acked

    async def _pipelined(
        self, redis: aioredis.Redis, calls: Sequence[Call], replicas: Replicas
    ) -> tuple[list[Any], int]:
        async with redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            if replicas.count:
                pipe.execute_command("WAIT", replicas.count, replicas.timeout_ms)
            results = list(await pipe.execute(raise_on_error=False))
        if not replicas.count:
            return results, 0
        acked = results.pop()
        if isinstance(acked, Exception):  # WAIT refused (an ACL, a proxy): the writes happened, unconfirmed
            logger.warning("WAIT failed after the writes: %s", acked)
            return results, 0
        return results, int(acked)


# Refreshes sorted-set entries: KEYS[i] gets member ARGV[3 + i] scored ARGV[1]; the first
# ARGV[3] of the keys also get EXPIRE ARGV[2] (the others, registries, keep no expiry). One
# command for a slice of thousands of entries: in a pipeline, each ZADD and EXPIRE cost redis-py
# tens of microseconds of the event loop (issue 17's profile).
_SCORE_MEMBERS = """
local expiring, ttl = tonumber(ARGV[3]), ARGV[2]
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[1], ARGV[3 + i])
  if i <= expiring then
    redis.call('EXPIRE', key, ttl)
  end
end
"""


KEYS_PER_SCRIPT_CALL = 500  # scripts over many keys take this many per call: none holds Redis for long


async def score_members(
    expiring: Sequence[tuple[str, str]], kept: Sequence[tuple[str, str]], score: float, ttl: int
) -> None:
    """ZADD each (key, member) at `score`, the `expiring` keys also expiring after `ttl` seconds:
    a script call per KEYS_PER_SCRIPT_CALL entries, all in one round trip."""
    pairs = [(key, member, True) for key, member in expiring] + [(key, member, False) for key, member in kept]
    calls: list[Call] = []
    for start in range(0, len(pairs), KEYS_PER_SCRIPT_CALL):
        chunk = pairs[start : start + KEYS_PER_SCRIPT_CALL]
        expires = sum(1 for *_, expire in chunk if expire)  # the expiring ones come first
        calls.append(([key for key, _, _ in chunk], [score, ttl, expires, *(member for _, member, _ in chunk)]))
    if calls:
        await SCORE_MEMBERS.run_many(calls)


@dataclass(frozen=True)
class Replicas:
    """How many replicas must acknowledge a write (WAIT), and for how long to wait for them."""

    count: int
    timeout_ms: int

    @classmethod
    def required(cls) -> Replicas:
        return cls(notifier_settings.REPLICA_ACKS, notifier_settings.REPLICA_ACK_TIMEOUT_MS)


async def replicated_now(replicas: Replicas) -> bool:
    """Whether `replicas.count` replicas have every write made so far on the current master.

    Replication is one ordered stream, so a replica that acknowledges a write made now also has
    every earlier one: a probe write, then WAIT on the same connection. Used when a publish
    that was stored but not replicated in time is retried with its idempotency key.
    """
    async with get_redis().pipeline(transaction=False) as pipe:
        pipe.set(f"{notifier_settings.REDIS_PREFIX}:replication-probe", "1", ex=60)
        pipe.execute_command("WAIT", replicas.count, replicas.timeout_ms)
        _, acked = await pipe.execute()
    return int(acked) >= replicas.count


SCORE_MEMBERS = LuaScript(_SCORE_MEMBERS)
