"""Rosters: who holds a name across the cluster, and when it gets its first holder or has
lost its last one for longer than a debounce.

Two rosters: a user's connections (the per-user connection limit, and the `presence.online` /
`presence.offline` webhooks) and a channel's server processes (`channel.occupied` /
`channel.vacated`). In Redis, a name has a sorted set of holders scored by their expiry
(holders refresh their entries, so one whose process died lapses), an "emptied" marker set when
its last holder left and taken by the check after the debounce (so a reload is neither an
offline nor an online), and a registry of the names told held, scored by their last refresh,
where a sweep finds the names whose every holder died.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .conf import notifier_settings
from .redis import cluster_mode, get_redis, score_members, slot_of, tag

# What `add` answers.
REFUSED, ADDED, BECAME_HELD = 0, 1, 2


class Roster(Protocol):
    async def add(self, name: str, holder: str, limit: int = 0) -> int:
        """Count `holder` for `name`: REFUSED when it already has `limit` (0: no limit),
        BECAME_HELD for its first holder with no emptying pending and not told held, else ADDED."""
        ...

    async def remove(self, name: str, holder: str) -> bool:
        """Uncount it; True when it was the last: call `went_empty` after the debounce."""
        ...

    async def went_empty(self, name: str) -> bool:
        """After the debounce: True, once, when `name` has had no holder since."""
        ...

    async def gone(self, limit: int) -> list[str]:
        """Names told held whose last refresh expired with no holder left: their holders'
        processes died. Each is answered once."""
        ...

    async def refresh(self, held: Sequence[tuple[str, str]]) -> None:
        """Keep these (name, holder) entries, and their names' registry entries, alive."""
        ...

    async def held(self, names: Sequence[str]) -> set[str]:
        """Those of `names` with a live holder (one round trip)."""
        ...


def _ttl() -> int:
    ttl: int = notifier_settings.PRESENCE_TTL_SECS
    return ttl


def _marker_ms() -> int:
    return int(notifier_settings.PRESENCE_DEBOUNCE_SECS * 2000)  # outlives the check at 1x


# KEYS: holders, emptied marker, registry. ARGV: now, holder, limit, ttl, name.
_ADD_LUA = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[3])
if limit > 0 and count >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
local pending = redis.call('DEL', KEYS[2]) == 1
local known = redis.call('ZSCORE', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[5])
if count == 0 and not pending and not known then return 2 end
return 1
"""

# KEYS: holders, emptied marker. ARGV: now, holder, marker ms. 1 when it was the last holder.
_REMOVE_LUA = """
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
redis.call('SET', KEYS[2], 1, 'PX', tonumber(ARGV[3]))
return 1
"""

# KEYS: holders, emptied marker, registry. ARGV: now, name. 1: emptied (told once: the marker
# is taken, the name leaves the registry).
_WENT_EMPTY_LUA = """
if redis.call('DEL', KEYS[2]) == 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
return redis.call('ZREM', KEYS[3], ARGV[2])
"""

# KEYS: holders, emptied marker, registry. ARGV: now, name. 1: the name's last refresh expired
# with no holder left and no check pending (its holders' processes died).
_GONE_LUA = """
local score = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not score or tonumber(score) > tonumber(ARGV[1]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) > 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('ZREM', KEYS[3], ARGV[2])
"""


# In cluster mode a name's keys and its registry must share a slot (one script uses all
# three), so the registry is split into this many buckets, each with its own hash tag; a name
# belongs to the bucket of its CRC-16. Enough buckets to spread over a cluster's masters, few
# enough for a sweep to read them all.
REGISTRY_BUCKETS = 64


class RedisRoster:
    def __init__(self, prefix: str, holders: str, emptied: str, registry: str) -> None:
        self._prefix, self._holders_kind, self._emptied_kind = prefix, holders, emptied
        self._registry = f"{prefix}:{registry}"

    def _bucket_tag(self, bucket: int) -> str:
        return tag(f"{self._registry}:{bucket}")

    def _bucket(self, name: str) -> str:
        """The part of `name`'s keys before the name: its bucket's hash tag in cluster mode."""
        return self._bucket_tag(slot_of(name) % REGISTRY_BUCKETS) if cluster_mode() else ""

    def _holders(self, name: str) -> str:
        return f"{self._prefix}:{self._holders_kind}:{self._bucket(name)}{name}"

    def _registry_of(self, name: str) -> str:
        return self._registry + (f":{self._bucket(name)}" if cluster_mode() else "")

    def _registries(self) -> list[str]:
        if not cluster_mode():
            return [self._registry]
        return [f"{self._registry}:{self._bucket_tag(n)}" for n in range(REGISTRY_BUCKETS)]

    def _keys(self, name: str) -> list[str]:
        emptied = f"{self._prefix}:{self._emptied_kind}:{self._bucket(name)}{name}"
        return [self._holders(name), emptied, self._registry_of(name)]

    async def add(self, name: str, holder: str, limit: int = 0) -> int:
        args: list[str | float] = [time.time(), holder, limit, _ttl(), name]
        return int(await get_redis().register_script(_ADD_LUA)(keys=self._keys(name), args=args))

    async def remove(self, name: str, holder: str) -> bool:
        script = get_redis().register_script(_REMOVE_LUA)
        return bool(await script(keys=self._keys(name)[:2], args=[time.time(), holder, _marker_ms()]))

    async def went_empty(self, name: str) -> bool:
        script = get_redis().register_script(_WENT_EMPTY_LUA)
        return bool(await script(keys=self._keys(name), args=[time.time(), name]))

    async def gone(self, limit: int) -> list[str]:
        now = time.time()
        redis = get_redis()
        async with redis.pipeline(transaction=False) as pipe:
            for registry in self._registries():
                pipe.zrangebyscore(registry, "-inf", now, start=0, num=limit)
            stale = [raw for found in await pipe.execute() for raw in found][:limit]
        script = redis.register_script(_GONE_LUA)
        gone = []
        for raw in stale:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if await script(keys=self._keys(name), args=[now, name]):
                gone.append(name)
        return gone

    async def refresh(self, held: Sequence[tuple[str, str]]) -> None:
        holders = [(self._holders(name), holder) for name, holder in held]
        registry = [(self._registry_of(name), name) for name in dict.fromkeys(name for name, _ in held)]
        await score_members(holders, registry, time.time() + _ttl(), _ttl() * 2)

    async def held(self, names: Sequence[str]) -> set[str]:
        now = time.time()
        async with get_redis().pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(self._holders(name), f"({now}", "+inf")
            live = await pipe.execute()
        return {name for name, n in zip(names, live, strict=True) if n}


def live_entries(sets: dict[str, dict[str, float]], key: str, now: float) -> dict[str, float]:
    """The in-process stores' sorted set `key` (member -> expiry), its expired members dropped."""
    entries = sets.setdefault(key, {})
    for member in [m for m, expiry in entries.items() if expiry <= now]:
        del entries[member]
    return entries


class MemoryRoster:
    """The same semantics in process memory, for the embedded mode (one process: nothing is
    ever `gone`)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._holders: dict[str, dict[str, float]] = {}
        self._emptied: set[str] = set()  # names whose last holder left: a check is due
        self._told: set[str] = set()  # names told held, not yet told emptied

    def _live(self, name: str) -> dict[str, float]:
        return live_entries(self._holders, name, self.clock())

    async def add(self, name: str, holder: str, limit: int = 0) -> int:
        holders = self._live(name)
        if limit and len(holders) >= limit:
            return REFUSED
        first = not holders
        holders[holder] = self.clock() + _ttl()
        pending = name in self._emptied
        self._emptied.discard(name)
        known = name in self._told
        self._told.add(name)
        return BECAME_HELD if first and not pending and not known else ADDED

    async def remove(self, name: str, holder: str) -> bool:
        holders = self._live(name)
        holders.pop(holder, None)
        if holders:
            return False
        del self._holders[name]
        self._emptied.add(name)
        return True

    async def went_empty(self, name: str) -> bool:
        if name not in self._emptied:
            return False
        self._emptied.discard(name)
        if self._live(name) or name not in self._told:
            return False
        self._told.discard(name)
        return True

    async def gone(self, limit: int) -> list[str]:
        return []

    async def refresh(self, held: Sequence[tuple[str, str]]) -> None:
        expiry = self.clock() + _ttl()
        for name, holder in held:
            self._holders.setdefault(name, {})[holder] = expiry

    async def held(self, names: Sequence[str]) -> set[str]:
        return {name for name in names if self._live(name)}


_memory = {"users": MemoryRoster(), "channels": MemoryRoster()}


def user_connections() -> Roster:
    """Per user, their connections (each holder is a connection id)."""
    if notifier_settings.embedded:
        return _memory["users"]
    return RedisRoster(notifier_settings.REDIS_PREFIX, "uc", "uoff", "online")


def channel_processes() -> Roster:
    """Per channel, the server processes with a subscriber on it (each holder is a hub)."""
    if notifier_settings.embedded:
        return _memory["channels"]
    return RedisRoster(notifier_settings.REDIS_PREFIX, "co", "cvac", "occupied")
