"""Per-channel history: offsets, epochs and the stored event frames.

Each channel has an offset that counts up from 1 and an epoch that changes whenever its history
is lost (expired, flushed), so a client holding an old position learns it cannot be recovered.
`append` stores frames and assigns their offsets atomically (one Lua script call per channel,
all channels of a publish or batch in one round trip), so publishers on many processes never produce
duplicate or reordered offsets.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured

from .conf import notifier_settings
from .events import FrameTemplate
from .redis import LuaScript, get_redis


@dataclass(frozen=True)
class Position:
    offset: int
    epoch: str

    def as_dict(self) -> dict[str, int | str]:
        return {"offset": self.offset, "epoch": self.epoch}


@dataclass(frozen=True)
class Append:
    channel: str
    template: FrameTemplate
    size: int
    ttl_secs: int


@dataclass(frozen=True)
class Stored:
    position: Position
    frame: str


@dataclass(frozen=True)
class Slice:
    """Frames after some offset, with the channel's latest position when they were read."""

    position: Position
    frames: list[tuple[int, str]] = field(default_factory=list)
    # False when history no longer reaches back to the requested offset.
    complete: bool = True


class History(Protocol):
    async def append(self, items: Sequence[Append]) -> list[Stored]: ...

    async def read(self, channel: str, after: int, limit: int) -> Slice: ...

    async def positions(self, channels: Sequence[str]) -> list[Position]: ...


MAX_OFFSET = 2**53 - 1  # no channel gets near it; clients' `since` may be anything


def history_limits(channel: str, size: int | None, ttl_secs: int | None) -> tuple[int, int]:
    """A channel's history size and TTL: its namespace's values, the NOTIFIER defaults where
    those are None. A size of 0 keeps no events (offsets and epochs still count, so recovery
    says `recovered: false`); a negative size, or a TTL under one second (which would drop
    history at once, a new epoch every publish), raises ImproperlyConfigured."""
    size = notifier_settings.HISTORY_SIZE if size is None else size
    ttl_secs = notifier_settings.HISTORY_TTL_SECS if ttl_secs is None else ttl_secs
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImproperlyConfigured(f"{channel!r}: history size must be an integer >= 0, not {size!r}")
    if isinstance(ttl_secs, bool) or not isinstance(ttl_secs, int) or ttl_secs < 1:
        raise ImproperlyConfigured(f"{channel!r}: history TTL must be an integer >= 1 second, not {ttl_secs!r}")
    return size, ttl_secs


def new_epoch() -> str:
    return secrets.token_hex(4)


def _complete(after: int, latest: int, frames: list[tuple[int, str]]) -> bool:
    if after >= latest:
        return True
    return bool(frames) and frames[0][0] == after + 1


# One call appends a channel's frames of one publish (or batch): they get consecutive offsets.
# KEYS: the meta hash, the log stream. ARGV: a new epoch (used if history is gone), max length,
# TTL, the frame head (the same for every event of a channel), then one frame tail per event.
_APPEND = LuaScript("""
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local count = #ARGV - 4
local first = redis.call('HINCRBY', KEYS[1], 'offset', count) - count + 1
local middle = ',"epoch":"' .. epoch .. '"'
for i = 1, count do
  local offset = first + i - 1
  redis.call('XADD', KEYS[2], offset .. '-0', 'f', ARGV[4] .. offset .. middle .. ARGV[4 + i])
end
redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {first, epoch}
""")


class RedisHistory:
    """History in Redis: a hash {epoch, offset} and a stream whose entry ids are the offsets."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def _keys(self, channel: str) -> tuple[str, str]:
        base = f"{self._prefix}:h:{channel}"
        return f"{base}:meta", f"{base}:log"

    async def append(self, items: Sequence[Append]) -> list[Stored]:
        """One script call per channel, all in one round trip; a channel's items keep their order."""
        by_channel: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            by_channel.setdefault(item.channel, []).append(index)
        calls = []
        for channel, indexes in by_channel.items():
            first = items[indexes[0]]
            tails = [items[i].template.tail for i in indexes]
            calls.append((self._keys(channel), [new_epoch(), first.size, first.ttl_secs, first.template.head, *tails]))
        results = await _APPEND.run_many(calls)
        stored: list[Stored | None] = [None] * len(items)
        for indexes, (first_offset, epoch) in zip(by_channel.values(), results, strict=True):
            epoch = _text(epoch)
            for offset, index in enumerate(indexes, start=int(first_offset)):
                stored[index] = Stored(Position(offset, epoch), items[index].template.render(offset, epoch))
        return stored  # type: ignore[return-value]  # every index was filled

    async def read(self, channel: str, after: int, limit: int) -> Slice:
        meta, log = self._keys(channel)
        after = min(after, MAX_OFFSET)  # beyond any offset; Redis refuses stream ids over 2^64 - 1
        async with get_redis().pipeline(transaction=True) as pipe:
            pipe.hmget(meta, "epoch", "offset")
            pipe.xrange(log, min=f"({after}-0" if after > 0 else "-", max="+", count=limit)
            (epoch, offset), entries = await pipe.execute()
        if epoch is None:
            # No history at all: a channel nobody has published to (or whose history expired).
            return Slice(Position(0, ""), [], complete=after <= 0)
        latest = int(offset)
        frames = [(int(_text(entry_id).split("-", 1)[0]), _text(fields[b"f"])) for entry_id, fields in entries]
        return Slice(Position(latest, _text(epoch)), frames, _complete(after, latest, frames))

    async def positions(self, channels: Sequence[str]) -> list[Position]:
        """The latest position of each channel, in one round trip."""
        async with get_redis().pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.hmget(self._keys(channel)[0], "epoch", "offset")
            rows = await pipe.execute()
        return [Position(int(offset), _text(epoch)) if epoch else Position(0, "") for epoch, offset in rows]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _MemoryLog:
    epoch: str
    offset: int
    frames: deque[tuple[int, str]]
    expires_at: float


class MemoryHistory:
    """History in process memory, for the embedded single-process mode."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._logs: dict[str, _MemoryLog] = {}
        self.clock = clock

    def _live_log(self, channel: str) -> _MemoryLog | None:
        log = self._logs.get(channel)
        if log is not None and log.expires_at <= self.clock():
            del self._logs[channel]
            return None
        return log

    async def append(self, items: Sequence[Append]) -> list[Stored]:
        stored = []
        for item in items:
            log = self._live_log(item.channel)
            if log is None or log.frames.maxlen != item.size:
                log = self._logs[item.channel] = _MemoryLog(
                    new_epoch() if log is None else log.epoch,
                    0 if log is None else log.offset,
                    deque(log.frames if log else (), maxlen=item.size),
                    0.0,
                )
            log.offset += 1
            log.expires_at = self.clock() + item.ttl_secs
            frame = item.template.render(log.offset, log.epoch)
            log.frames.append((log.offset, frame))
            stored.append(Stored(Position(log.offset, log.epoch), frame))
        return stored

    async def read(self, channel: str, after: int, limit: int) -> Slice:
        log = self._live_log(channel)
        if log is None:
            return Slice(Position(0, ""), [], complete=after <= 0)
        frames = [(offset, frame) for offset, frame in log.frames if offset > after][:limit]
        return Slice(Position(log.offset, log.epoch), frames, _complete(after, log.offset, frames))

    async def positions(self, channels: Sequence[str]) -> list[Position]:
        logs = [self._live_log(channel) for channel in channels]
        return [Position(log.offset, log.epoch) if log else Position(0, "") for log in logs]


_memory_history = MemoryHistory()


def get_history() -> History:
    """The history backend of this process: Redis when configured, else process memory."""
    if notifier_settings.embedded:
        return _memory_history
    return RedisHistory(notifier_settings.REDIS_PREFIX)
