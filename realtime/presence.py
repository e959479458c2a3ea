"""Presence: who is subscribed to a channel, across every server process.

Each subscription on a presence-enabled namespace is an entry `user|connection` in a Redis
sorted set scored by its expiry. The hub refreshes its own entries periodically, so a process
that dies stops refreshing and its entries expire (PRESENCE_TTL_SECS). Join and leave frames
are debounced: a leave is announced only if the user has had no connection on the channel for
PRESENCE_LEAVE_DELAY_SECS, and a join within that delay is not announced, so a page refresh
produces neither.

The same structure, per user, counts a user's connections for MAX_CONNECTIONS_PER_USER, and
tells when a user comes online in the cluster (their first connection) and goes offline (their
last one gone for PRESENCE_DEBOUNCE_SECS, so a reload is neither): the `presence.*` webhooks.
A registry of online users (a sorted set scored by their last refresh) lets a sweep find the
users whose every connection was on a process that died.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .conf import notifier_settings
from .redis import get_redis

Entry = tuple[str, str, str]  # (channel, user, connection id)


class PresenceStore(Protocol):
    async def join(self, channel: str, user: str, conn_id: str) -> bool: ...

    async def leave(self, channel: str, user: str, conn_id: str) -> None: ...

    async def user_gone(self, channel: str, user: str) -> bool: ...

    async def members(self, channel: str) -> dict[str, int]: ...

    async def refresh(self, entries: Sequence[Entry], users: Sequence[tuple[str, str]]) -> None: ...

    async def register_connection(self, user: str, conn_id: str, limit: int) -> int: ...

    async def unregister_connection(self, user: str, conn_id: str) -> bool: ...

    async def went_offline(self, user: str) -> bool: ...

    async def gone_users(self, limit: int) -> list[str]: ...

    async def connected(self, users: Sequence[str]) -> set[str]: ...


def _ttl() -> int:
    ttl: int = notifier_settings.PRESENCE_TTL_SECS
    return ttl


def _marker_ms() -> int:
    return int(notifier_settings.PRESENCE_LEAVE_DELAY_SECS * 2000)


_JOIN_LUA = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local prefix = ARGV[2] .. '|'
local present = false
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then present = true; break end
end
local pending = redis.call('EXISTS', KEYS[2]) == 1
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), prefix .. ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
if present or pending then return 0 end
return 1
"""

_GONE_LUA = """
local now = tonumber(ARGV[1])
if redis.call('DEL', KEYS[2]) == 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local prefix = ARGV[2] .. '|'
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then return 0 end
end
return 1
"""

# What `register_connection` answers.
REFUSED, REGISTERED, CAME_ONLINE = 0, 1, 2

# KEYS: the user's connections, their offline marker, the online registry. ARGV: now, conn id,
# limit, ttl, user. 0: over the limit; 1: registered; 2: registered, and the user came online
# (no connection, no offline pending, not in the registry: an offline was told, or never online).
_REGISTER_LUA = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
local pending = redis.call('DEL', KEYS[2]) == 1
local known = redis.call('ZSCORE', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[5])
if count == 0 and not pending and not known then return 2 end
return 1
"""

# KEYS: connections, offline marker. ARGV: now, conn id, marker ms. 1 when it was the last
# connection: the marker is set and an offline check is due after the debounce.
_UNREGISTER_LUA = """
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
redis.call('SET', KEYS[2], 1, 'PX', tonumber(ARGV[3]))
return 1
"""

# KEYS: connections, offline marker, online registry. ARGV: now, user. 1: the user went
# offline (told once: the marker is taken, the user leaves the registry).
_WENT_OFFLINE_LUA = """
if redis.call('DEL', KEYS[2]) == 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
return redis.call('ZREM', KEYS[3], ARGV[2])
"""

# KEYS: connections, offline marker, online registry. ARGV: now, user. 1: the user's last
# refresh expired with no connection left and no check pending (its process died).
_GONE_LUA_USER = """
local score = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not score or tonumber(score) > tonumber(ARGV[1]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) > 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('ZREM', KEYS[3], ARGV[2])
"""


def _debounce_ms() -> int:
    return int(notifier_settings.PRESENCE_DEBOUNCE_SECS * 2000)  # outlives the check at 1x


class RedisPresenceStore:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def _set(self, channel: str) -> str:
        return f"{self._prefix}:p:{channel}"

    def _marker(self, channel: str, user: str) -> str:
        return f"{self._prefix}:pl:{channel}:{user}"

    def _user_set(self, user: str) -> str:
        return f"{self._prefix}:uc:{user}"

    def _user_keys(self, user: str) -> list[str]:
        return [self._user_set(user), f"{self._prefix}:uoff:{user}", f"{self._prefix}:online"]

    async def join(self, channel: str, user: str, conn_id: str) -> bool:
        """Add an entry; True when the user was not already present (announce a join)."""
        redis = get_redis()
        keys = [self._set(channel), self._marker(channel, user)]
        result = await redis.register_script(_JOIN_LUA)(keys=keys, args=[time.time(), user, conn_id, _ttl()])
        return bool(result)

    async def leave(self, channel: str, user: str, conn_id: str) -> None:
        async with get_redis().pipeline(transaction=True) as pipe:
            pipe.zrem(self._set(channel), f"{user}|{conn_id}")
            pipe.set(self._marker(channel, user), 1, px=_marker_ms())
            await pipe.execute()

    async def user_gone(self, channel: str, user: str) -> bool:
        """After the leave delay: True when the user left for good (announce a leave, once)."""
        keys = [self._set(channel), self._marker(channel, user)]
        return bool(await get_redis().register_script(_GONE_LUA)(keys=keys, args=[time.time(), user]))

    async def members(self, channel: str) -> dict[str, int]:
        redis = get_redis()
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._set(channel), "-inf", time.time())
            pipe.zrange(self._set(channel), 0, -1)
            _, entries = await pipe.execute()
        return _count(entry.decode() if isinstance(entry, bytes) else entry for entry in entries)

    async def refresh(self, entries: Sequence[Entry], users: Sequence[tuple[str, str]]) -> None:
        expiry, ttl = time.time() + _ttl(), _ttl() * 2
        async with get_redis().pipeline(transaction=False) as pipe:
            for channel, user, conn_id in entries:
                pipe.zadd(self._set(channel), {f"{user}|{conn_id}": expiry})
                pipe.expire(self._set(channel), ttl)
            for user, conn_id in users:
                pipe.zadd(self._user_set(user), {conn_id: expiry})
                pipe.expire(self._user_set(user), ttl)
            if users:
                pipe.zadd(f"{self._prefix}:online", {user: expiry for user, _ in users})
            await pipe.execute()

    async def register_connection(self, user: str, conn_id: str, limit: int) -> int:
        """Count a user's connection: REFUSED when the user already has `limit`, CAME_ONLINE
        when it is their first in the cluster (and no offline was pending), else REGISTERED."""
        script = get_redis().register_script(_REGISTER_LUA)
        args: list[str | float] = [time.time(), conn_id, limit, _ttl(), user]
        return int(await script(keys=self._user_keys(user), args=args))

    async def unregister_connection(self, user: str, conn_id: str) -> bool:
        """Uncount it; True when it was the user's last: `went_offline` after the debounce."""
        script = get_redis().register_script(_UNREGISTER_LUA)
        keys = self._user_keys(user)[:2]
        return bool(await script(keys=keys, args=[time.time(), conn_id, _debounce_ms()]))

    async def went_offline(self, user: str) -> bool:
        """After the debounce: True, once, when the user has had no connection since."""
        script = get_redis().register_script(_WENT_OFFLINE_LUA)
        return bool(await script(keys=self._user_keys(user), args=[time.time(), user]))

    async def gone_users(self, limit: int) -> list[str]:
        """Users of the online registry whose last refresh expired with no connection left:
        their process died. Each is answered once (and leaves the registry)."""
        now = time.time()
        redis = get_redis()
        stale = await redis.zrangebyscore(f"{self._prefix}:online", "-inf", now, start=0, num=limit)
        script = redis.register_script(_GONE_LUA_USER)
        gone = []
        for raw in stale:
            user = raw.decode() if isinstance(raw, bytes) else str(raw)
            if await script(keys=self._user_keys(user), args=[now, user]):
                gone.append(user)
        return gone

    async def connected(self, users: Sequence[str]) -> set[str]:
        """Those of `users` with a live connection on any server process (one round trip)."""
        now = time.time()
        async with get_redis().pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zcount(self._user_set(user), f"({now}", "+inf")
            live = await pipe.execute()
        return {user for user, n in zip(users, live, strict=True) if n}


def _count(entries: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:  # type: ignore[attr-defined]
        user = str(entry).split("|", 1)[0]
        counts[user] = counts.get(user, 0) + 1
    return counts


class MemoryPresenceStore:
    """The same semantics in process memory, for the embedded mode."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._sets: dict[str, dict[str, float]] = {}
        self._markers: dict[tuple[str, str], float] = {}
        self._online: set[str] = set()  # users told online, not yet told offline
        self._offline: dict[str, float] = {}  # users whose last connection closed: a check is due

    def _live(self, key: str) -> dict[str, float]:
        entries = self._sets.setdefault(key, {})
        now = self.clock()
        for member in [m for m, expiry in entries.items() if expiry <= now]:
            del entries[member]
        return entries

    def _marker_live(self, channel: str, user: str) -> bool:
        return self._markers.get((channel, user), 0) > self.clock()

    async def join(self, channel: str, user: str, conn_id: str) -> bool:
        entries = self._live(f"p:{channel}")
        present = any(m.startswith(f"{user}|") for m in entries) or self._marker_live(channel, user)
        entries[f"{user}|{conn_id}"] = self.clock() + _ttl()
        return not present

    async def leave(self, channel: str, user: str, conn_id: str) -> None:
        self._live(f"p:{channel}").pop(f"{user}|{conn_id}", None)
        self._markers[(channel, user)] = self.clock() + _marker_ms() / 1000

    async def user_gone(self, channel: str, user: str) -> bool:
        if self._markers.pop((channel, user), None) is None:
            return False
        return not any(m.startswith(f"{user}|") for m in self._live(f"p:{channel}"))

    async def members(self, channel: str) -> dict[str, int]:
        return _count(self._live(f"p:{channel}"))

    async def refresh(self, entries: Sequence[Entry], users: Sequence[tuple[str, str]]) -> None:
        expiry = self.clock() + _ttl()
        for channel, user, conn_id in entries:
            self._sets.setdefault(f"p:{channel}", {})[f"{user}|{conn_id}"] = expiry
        for user, conn_id in users:
            self._sets.setdefault(f"u:{user}", {})[conn_id] = expiry

    async def register_connection(self, user: str, conn_id: str, limit: int) -> int:
        entries = self._live(f"u:{user}")
        if len(entries) >= limit:
            return REFUSED
        first = not entries
        entries[conn_id] = self.clock() + _ttl()
        pending = self._offline.pop(user, None) is not None
        known = user in self._online
        self._online.add(user)
        return CAME_ONLINE if first and not pending and not known else REGISTERED

    async def unregister_connection(self, user: str, conn_id: str) -> bool:
        entries = self._live(f"u:{user}")
        entries.pop(conn_id, None)
        if entries:
            return False
        self._offline[user] = self.clock()
        return True

    async def went_offline(self, user: str) -> bool:
        if self._offline.pop(user, None) is None or self._live(f"u:{user}"):
            return False
        if user not in self._online:
            return False
        self._online.discard(user)
        return True

    async def gone_users(self, limit: int) -> list[str]:
        return []  # one process: none of its connections outlives it

    async def connected(self, users: Sequence[str]) -> set[str]:
        return {user for user in users if self._live(f"u:{user}")}


_memory_store = MemoryPresenceStore()


def get_presence() -> PresenceStore:
    if notifier_settings.embedded:
        return _memory_store
    return RedisPresenceStore(notifier_settings.REDIS_PREFIX)


def presence_summary(members: dict[str, int]) -> dict[str, object]:
    """The presence answer: users with their connection counts, and anonymous connections."""
    users = {user: count for user, count in sorted(members.items()) if user}
    return {
        "users": [{"user": user, "connections": count} for user, count in users.items()],
        "anonymous_connections": members.get("", 0),
        "total_connections": sum(members.values()),
    }
