"""Per-key publish rate: one fixed-window counter per API key, a batch counting each event.

With Redis the window is a Redis counter shared by every process, counted by one Lua call that
also reads the API-key generation (api/keys.py), so the publish route pays one round trip for
both. In the embedded mode there is one process and no Redis: the window is counted in memory.
A counter costs one INCR per request, where DRF's SimpleRateThrottle keeps a list of timestamps
per key (O(rate) per request).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import NamedTuple

from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisError

from realtime.conf import notifier_settings
from realtime.publish import Unavailable
from realtime.redis import LuaScript, cluster_mode, get_redis

PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400}

# KEYS: this key's counter for the current window, then (on one Redis) the key generation.
# ARGV: cost, window TTL. In cluster mode the two keys are in different slots: the generation is
# read by a GET sent at the same time.
_COUNT_AND_READ_GENERATION = LuaScript("""
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if used == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {used, KEYS[2] and redis.call('GET', KEYS[2]) or false}
""")


def parse_rate(rate: str) -> tuple[int, int]:
    """'1000/s' -> (1000, 1)."""
    try:
        count, period = rate.split("/", 1)
        return int(count), PERIODS[period.strip().lower()]
    except (ValueError, KeyError):
        raise ImproperlyConfigured(f"NOTIFIER_PUBLISH_RATE_PER_KEY={rate!r}: use N/s, N/m, N/h or N/d") from None


def generation_key() -> str:
    return f"{notifier_settings.REDIS_PREFIX}:apikeys:generation"


class Window(NamedTuple):
    """How much of its current rate window a key has used, this request included."""

    used: int
    limit: int
    retry_after: float  # seconds until the window ends

    @property
    def exceeded(self) -> bool:
        return self.used > self.limit


class Counted(NamedTuple):
    window: Window
    generation: bytes | None  # the API-key generation read in the same round trip (Redis mode)


async def count(key_hash: str, cost: int) -> Counted:
    """Count `cost` publishes against the key's current window; raises Unavailable without Redis
    (nothing could be published either)."""
    limit, period = parse_rate(notifier_settings.PUBLISH_RATE_PER_KEY)
    now = time.time()
    window = int(now // period)
    retry_after = (window + 1) * period - now
    if notifier_settings.embedded:
        return Counted(Window(_local.add(key_hash, window, cost), limit, retry_after), None)
    rate_key = f"{notifier_settings.REDIS_PREFIX}:rate:{key_hash[:32]}:{window}"
    try:
        if cluster_mode():
            counted, generation = await asyncio.gather(
                _COUNT_AND_READ_GENERATION.run([rate_key], [cost, period + 1]), get_redis().get(generation_key())
            )
            used = counted[0]
        else:
            used, generation = await _COUNT_AND_READ_GENERATION.run([rate_key, generation_key()], [cost, period + 1])
    except (RedisError, OSError) as exc:
        raise Unavailable("Redis is unavailable; the event was not published") from exc
    return Counted(Window(int(used), limit, retry_after), generation)


class _LocalWindows:
    """The embedded mode's counters: only the current window of each key is kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the DRF views count from their own threads
        self._used: dict[str, tuple[int, int]] = {}  # key hash -> (window, used)

    def add(self, key_hash: str, window: int, cost: int) -> int:
        with self._lock:
            seen_window, used = self._used.get(key_hash, (window, 0))
            used = used + cost if seen_window == window else cost
            self._used[key_hash] = (window, used)
            return used


_local = _LocalWindows()
