"""Presence: who is subscribed to a channel, across every server process.

Each subscription on a presence-enabled namespace is an entry `user|connection` in a Redis
sorted set scored by its expiry. The hub refreshes its own entries periodically, so a process
that dies stops refreshing and its entries expire (PRESENCE_TTL_SECS). Join and leave frames
are debounced: a leave is announced only if the user has had no connection on the channel for
PRESENCE_LEAVE_DELAY_SECS, and a join within that delay is not announced, so a page refresh
produces neither.

A user's connections across the cluster (the connection limit, `presence.*` webhooks) are
counted by realtime/rosters.py instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .channels import in_keys
from .conf import notifier_settings
from .redis import get_redis, score_members
from .rosters import live_entries

Entry = tuple[str, str, str]  # (channel, user, connection id)


class PresenceStore(Protocol):
    async def join(self, channel: str, user: str, conn_id: str) -> bool: ...

    async def leave(self, channel: str, user: str, conn_id: str) -> None: ...

    async def user_gone(self, channel: str, user: str) -> bool: ...

    async def members(self, channel: str) -> dict[str, int]: ...

    async def refresh(self, entries: Sequence[Entry]) -> None: ...


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


class RedisPresenceStore:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def _set(self, channel: str) -> str:
        return f"{self._prefix}:p:{in_keys(channel)}"

    def _marker(self, channel: str, user: str) -> str:
        return f"{self._prefix}:pl:{in_keys(channel)}:{user}"

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

    async def refresh(self, entries: Sequence[Entry]) -> None:
        members = [(self._set(channel), f"{user}|{conn_id}") for channel, user, conn_id in entries]
        await score_members(members, [], time.time() + _ttl(), _ttl() * 2)


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

    def _live(self, key: str) -> dict[str, float]:
        return live_entries(self._sets, key, self.clock())

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

    async def refresh(self, entries: Sequence[Entry]) -> None:
        expiry = self.clock() + _ttl()
        for channel, user, conn_id in entries:
            self._sets.setdefault(f"p:{channel}", {})[f"{user}|{conn_id}"] = expiry


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
