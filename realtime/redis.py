"""One Redis client per event loop, with a deliberately sized, blocking connection pool.

redis-py 8 raises MaxConnectionsError when a plain pool is exhausted (DESIGN §8); a
BlockingConnectionPool waits for a free connection instead, so a burst queues rather than fails.

With Sentinel (`settings.REDIS_SENTINEL`, from NOTIFIER_REDIS_SENTINELS), the pool asks the
Sentinels for the current master before each new connection, and after a failover reconnects to
the new one; REDIS_URL then supplies only the db number and credentials.

With Redis Cluster (`settings.REDIS_CLUSTER`, from NOTIFIER_REDIS_CLUSTER) the client is redis-py's
RedisCluster, which follows MOVED and ASK and refreshes its slot map after a failover. Every key
that a script or a transaction uses together with another carries the same hash tag (`tag()`),
so it runs on one node; scripts never run over keys of several slots.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.sentinel
from django.conf import settings
from redis import asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, NoScriptError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from .conf import notifier_settings

logger = logging.getLogger(__name__)

# aioredis.Redis, or RedisCluster in cluster mode: every command this project sends is on both.
Client = Any
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = weakref.WeakKeyDictionary()
# RedisCluster raises MaxConnectionsError past this many connections to one node instead of
# waiting (DESIGN §8): far above what one process keeps in flight to a node.
CLUSTER_MAX_CONNECTIONS_PER_NODE = 1000


def cluster_mode() -> bool:
    """Whether Redis is a cluster (NOTIFIER_REDIS_CLUSTER)."""
    return getattr(settings, "REDIS_CLUSTER", None) is not None


def tag(name: str) -> str:
    """`name` as it appears in its keys: itself on one Redis; in cluster mode a hash tag, so that
    every key made with it maps to one slot (and its scripts run on one node). Only in cluster
    mode: keys on an existing single Redis keep their names across an upgrade."""
    return f"{{{name}}}" if cluster_mode() else name


def slot_of(key: str) -> int:
    """The cluster slot of `key` (hash tag included)."""
    return int(key_slot(key.encode()))


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


def get_redis() -> Client:
    """The Redis client of the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None and cluster_mode():
        client = _clients[loop] = _cluster_client()
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


class _ClosedWriteIsConnectionError:
    """redis-py#4287: writing on a pooled connection that the peer closed (a killed cluster
    node) raises the transport's own error instead of ConnectionError: under uvloop
    `RuntimeError: unable to perform operation on <TCPTransport closed=True>`, or
    `AttributeError: 'NoneType' object has no attribute 'writelines'` once redis-py dropped the
    writer. RedisCluster then neither refreshes its slot map nor retries, and the caller sees
    no RedisError (seen here with a master killed: 500s)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except (RuntimeError, AttributeError, TypeError) as exc:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisConnectionError(f"Error while writing to a closed connection: {exc}") from exc


class _ClusterConnection(_ClosedWriteIsConnectionError, aioredis.Connection):
    pass


class _ClusterSSLConnection(_ClosedWriteIsConnectionError, SSLConnection):
    pass


def owner_of(cluster: RedisCluster, key: str) -> ClusterNode:
    """The master that owns `key`'s slot, as the client's slot map says now."""
    node = cluster.get_node_from_key(key)
    if node is None:
        raise SlotNotCoveredError(f"no node holds the slot of {key!r}")
    return node


def _cluster_connections() -> tuple[dict[str, Any], type[aioredis.Connection], bool]:
    """What every connection to a cluster node takes from REDIS_URL: the credentials, the
    connection class (TLS for `rediss://`), and whether it is TLS."""
    url: dict[str, Any] = dict(parse_url(notifier_settings.REDIS_URL))
    credentials = {name: url[name] for name in ("username", "password") if url.get(name)}
    ssl = notifier_settings.REDIS_URL.startswith("rediss://")
    return credentials, _ClusterSSLConnection if ssl else _ClusterConnection, ssl


def _cluster_client() -> RedisCluster:
    """A RedisCluster from the seed nodes; REDIS_URL gives the credentials and TLS."""
    credentials, connection_class, ssl = _cluster_connections()
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in settings.REDIS_CLUSTER or ()],
        ssl=ssl,
        max_connections=CLUSTER_MAX_CONNECTIONS_PER_NODE,
        socket_connect_timeout=notifier_settings.REDIS_CONNECT_TIMEOUT_SECS,
        socket_timeout=notifier_settings.REDIS_SOCKET_TIMEOUT_SECS,
        socket_keepalive=True,
        health_check_interval=10,
        client_name=f"notifier-{os.getpid()}",
        **credentials,
    )
    # RedisCluster takes no connection class: its nodes, and those it discovers, read this one.
    client.connection_kwargs["connection_class"] = connection_class
    for node in client.startup_nodes:
        node.connection_class = connection_class
    return client


def node_client(host: str, port: int) -> aioredis.Redis:
    """A client of one cluster node alone, with REDIS_URL's credentials and TLS: for the channel
    layer's subscriptions (realtime/broker.py), which must not share RedisCluster's pools."""
    credentials, connection_class, _ = _cluster_connections()
    pool = aioredis.ConnectionPool(
        connection_class=connection_class,
        host=host,
        port=port,
        **credentials,
        socket_connect_timeout=notifier_settings.REDIS_CONNECT_TIMEOUT_SECS,
        socket_keepalive=True,
        health_check_interval=10,
        client_name=f"notifier-{os.getpid()}-layer",
    )
    return aioredis.Redis(connection_pool=pool)


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

    async def _pipelined(self, redis: Client, calls: Sequence[Call], replicas: Replicas) -> tuple[list[Any], int]:
        if cluster_mode():
            return await self._pipelined_on_cluster(redis, calls, replicas)
        async with redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            if replicas.count:
                pipe.execute_command("WAIT", replicas.count, replicas.timeout_ms)
            results = list(await pipe.execute(raise_on_error=False))
        if not replicas.count:
            return results, 0
        return results, _acked(results.pop())

    async def _pipelined_on_cluster(
        self, cluster: RedisCluster, calls: Sequence[Call], replicas: Replicas
    ) -> tuple[list[Any], int]:
        """The calls as one pipeline per node, all sent at once (RedisCluster groups them by
        their keys' slots). redis-py refuses `evalsha` in a cluster pipeline (redis-py#2914);
        the raw command is routed by its keys like any other.

        With `replicas.count`, each node's pipeline ends with a WAIT on the connection that made
        its writes. A call that MOVED or ASK sends elsewhere would then escape its WAIT, so
        redirections are not followed here: the slot map is refreshed and those calls run again
        (a redirected call ran nothing), each batch with its own WAITs; the fewest acks count."""
        await cluster.initialize()
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        acked = replicas.count
        for attempt in range(REDIRECT_ATTEMPTS):
            owners = [owner_of(cluster, calls[i][0][0]) for i in pending] if replicas.count else []
            async with cluster.pipeline(transaction=False) as pipe:
                for i in pending:
                    keys, args = calls[i]
                    pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
                for node in {node.name: node for node in owners}.values():
                    pipe.execute_command("WAIT", replicas.count, replicas.timeout_ms, target_nodes=node)
                replies = list(await pipe.execute(raise_on_error=False, allow_redirections=not replicas.count))
            for reply in replies[len(pending) :]:
                acked = min(acked, _acked(reply))
            redirected = []
            for i, reply in zip(pending, replies, strict=False):
                results[i] = reply
                if isinstance(reply, MovedError | AskError | TryAgainError):
                    redirected.append(i)
            if not redirected or attempt == REDIRECT_ATTEMPTS - 1:
                break
            if any(isinstance(results[i], MovedError) for i in redirected):
                await cluster.nodes_manager.initialize()  # a slot moved for good: learn where
            else:
                await asyncio.sleep(REDIRECT_WAIT_SECS)  # a slot is migrating: wait for its end
            pending = redirected
        return results, acked if replicas.count else 0


REDIRECT_ATTEMPTS = 50  # with REDIRECT_WAIT_SECS, how long a write with WAIT waits out a slot's migration
REDIRECT_WAIT_SECS = 0.05


def _acked(reply: Any) -> int:
    """WAIT's answer; 0 where it was refused (an ACL, a proxy): the writes happened, unconfirmed."""
    if isinstance(reply, Exception):
        logger.warning("WAIT failed after the writes: %s", reply)
        return 0
    return int(reply)


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

T = TypeVar("T")


def same_slot(keys: Sequence[str], items: Sequence[T]) -> list[list[T]]:
    """`items` (one per key) in groups that a script may take together: all of them on one
    Redis; in cluster mode one group per slot (a script's keys must share one). Order is kept
    within a group."""
    if not cluster_mode():
        return [list(items)] if items else []
    groups: dict[int, list[T]] = {}
    for key, item in zip(keys, items, strict=True):
        groups.setdefault(slot_of(key), []).append(item)
    return list(groups.values())


async def score_members(
    expiring: Sequence[tuple[str, str]], kept: Sequence[tuple[str, str]], score: float, ttl: int
) -> None:
    """ZADD each (key, member) at `score`, the `expiring` keys also expiring after `ttl` seconds:
    a script call per KEYS_PER_SCRIPT_CALL entries, all in one round trip."""
    pairs = [(key, member, True) for key, member in expiring] + [(key, member, False) for key, member in kept]
    calls: list[Call] = []
    for group in same_slot([key for key, _, _ in pairs], pairs):
        for start in range(0, len(group), KEYS_PER_SCRIPT_CALL):
            chunk = group[start : start + KEYS_PER_SCRIPT_CALL]
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
    if cluster_mode():
        return await _replicated_on_every_primary(get_redis(), replicas)
    async with get_redis().pipeline(transaction=False) as pipe:
        pipe.set(f"{notifier_settings.REDIS_PREFIX}:replication-probe", "1", ex=60)
        pipe.execute_command("WAIT", replicas.count, replicas.timeout_ms)
        _, acked = await pipe.execute()
    return int(acked) >= replicas.count


async def _replicated_on_every_primary(cluster: RedisCluster, replicas: Replicas) -> bool:
    """`replicated_now` in cluster mode: a probe write and WAIT on each primary that holds slots."""
    await cluster.initialize()
    async with cluster.pipeline(transaction=False) as pipe:
        for node in cluster.get_primaries():
            key = _probe_key_on(cluster, node)
            if key is not None:
                pipe.set(key, "1", ex=60)
                pipe.execute_command("WAIT", replicas.count, replicas.timeout_ms, target_nodes=node)
        replies = await pipe.execute(raise_on_error=False, allow_redirections=False)
    written = all(not isinstance(reply, Exception) for reply in replies[0::2])
    return written and all(_acked(reply) >= replicas.count for reply in replies[1::2])


def _probe_key_on(cluster: RedisCluster, node: ClusterNode) -> str | None:
    """A probe key in one of `node`'s slots (None: it holds none)."""
    for n in range(100_000):  # a node with one slot of 16384 is found within this many, in practice
        key = f"{notifier_settings.REDIS_PREFIX}:replication-probe:{{{n}}}"
        if owner_of(cluster, key).name == node.name:
            return key
    return None


SCORE_MEMBERS = LuaScript(_SCORE_MEMBERS)
