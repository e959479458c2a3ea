"""Per-channel history: offsets, epochs and the stored event frames.

Each channel has an offset that counts up from 1 and an epoch that changes whenever its history
is lost (expired, flushed) or may have gone backwards, so a client holding an old position
learns it cannot be recovered. `append` stores frames and assigns their offsets atomically (one
Lua script call per channel, all channels of a publish or batch in one round trip), so publishers
on many processes never produce duplicate or reordered offsets.

History goes backwards when Redis loses writes it had acknowledged: a replica promoted by
Sentinel (replication is asynchronous), a restart from an older RDB or AOF. The promoted or
restored data still says "epoch E, offset 152" after offsets up to 199 were handed out, so
carrying on from 152 would give 153-199 to other events. Each channel's meta therefore records
the `master_replid` of the Redis that last wrote it, and every script compares it with the
replid of the Redis running it (INFO, about 2 us inside the script). A promoted replica and a
restarted master always have a new replid, so history written before a failover or restart is
never continued: the channel moves to a new epoch (subscribers and resuming clients are told
`recovered: false`). This is sure (it needs no client to have seen the lost offsets) and cheap
(no extra round trip). It also moves channels after a restart that lost nothing: there is no
cheap way to know that nothing was lost, and a needless `recovered: false` costs a refetch,
where a wrong `recovered: true` costs events. The hubs add a second check for what they have
seen themselves: a channel behind the offset they delivered, in the same epoch (`check`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import events, rewinds
from .channels import group_of, in_keys
from .conf import notifier_settings
from .frames import FrameTemplate
from .redis import KEYS_PER_SCRIPT_CALL, LuaScript, Replicas, get_redis, same_slot


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
class SendFrom:
    """The append script also publishes what it stored (realtime/broker.py `script_send`): with
    `command` (PUBLISH, or SPUBLISH on a cluster) to `prefix` + the channel's group + `suffix`,
    as the channel layer's `message_type` messages (msgpack), each holding consecutive frames of
    at most `message_bytes`."""

    prefix: str
    message_type: str
    message_bytes: int
    command: str = "PUBLISH"
    suffix: str = ""

    def target(self, channel: str) -> str:
        return self.prefix + group_of(channel) + self.suffix


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
    async def append(self, items: Sequence[Append], send: SendFrom | None = None) -> list[Stored]: ...

    async def read(self, channel: str, after: int, limit: int) -> Slice: ...

    async def positions(self, channels: Sequence[str]) -> list[Position]: ...

    async def check(self, delivered: Sequence[tuple[str, Position]]) -> list[Position]: ...

    async def erase(self, channel: str) -> None:
        """Forget the channel's history: its next event starts a new epoch."""
        ...


class NotReplicated(Exception):
    """The frames are stored on the master, but fewer replicas than required acknowledged them
    within the timeout (NOTIFIER_REPLICA_ACKS): a failover now could lose them."""

    def __init__(self, stored: list[Stored], acked: int, required: int) -> None:
        super().__init__(f"{acked} of {required} replicas acknowledged the write in time")
        self.stored, self.acked, self.required = stored, acked, required


MAX_OFFSET = 2**53 - 1  # no channel gets near it; clients' `since` may be anything


def new_epoch() -> str:
    return events.random_hex(4)


def _complete(after: int, latest: int, frames: list[tuple[int, str]]) -> bool:
    if after >= latest:
        return True
    return bool(frames) and frames[0][0] == after + 1


# The replid of the Redis running the script: a promoted replica and a restarted master get a new
# one. "" where INFO is refused (an ACL without it): only the hubs' behind-check applies then.
_THIS_MASTER = """
local info = redis.pcall('INFO', 'replication')
local master = type(info) == 'string' and string.match(info, 'master_replid:(%x+)') or ''
"""

# One call appends a channel's frames of one publish (or batch): they get consecutive offsets.
# KEYS: the meta hash, the log stream. ARGV: a new epoch (used if history is gone or was written
# under another master), max length, TTL; the pub/sub channel to publish the frames on ("": not
# here), the channel, the most frame bytes per message, the message type, the command (PUBLISH or
# SPUBLISH); the frame head (the same for every event of a channel), then one frame tail per
# event. Returns {first offset, epoch, 1 if it moved the epoch because another master wrote the
# history, the current master}.
# Meta written before masters were recorded adopts the current one. The messages are what
# channels-redis's msgpack serializer makes of broker.event_messages' dicts.
_APPEND = LuaScript(
    _THIS_MASTER
    + """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'master')
local epoch, moved = meta[1], 0
if epoch and meta[2] and meta[2] ~= master then
  epoch, moved = false, 1
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'master', master)
elseif not meta[2] then
  redis.call('HSET', KEYS[1], 'master', master)
end
local count = #ARGV - 9
local first = redis.call('HINCRBY', KEYS[1], 'offset', count) - count + 1
local middle = ',"epoch":"' .. epoch .. '"'
local target, limit = ARGV[4], tonumber(ARGV[6])
local run, run_first, run_bytes = {}, first, 0
local function send()
  local message = {type = ARGV[7], channel = ARGV[5], offset = run_first, epoch = epoch, frames = run}
  redis.call(ARGV[8], target, cmsgpack.pack(message))
end
for i = 1, count do
  local offset = first + i - 1
  local frame = ARGV[9] .. offset .. middle .. ARGV[9 + i]
  redis.call('XADD', KEYS[2], offset .. '-0', 'f', frame)
  if target ~= '' then
    if #run > 0 and run_bytes + #frame > limit then
      send()
      run, run_first, run_bytes = {}, offset, 0
    end
    run[#run + 1] = frame
    run_bytes = run_bytes + #frame
  end
end
if target ~= '' then
  send()
end
redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {first, epoch, moved, master}
"""
)

# Moves a channel to a new epoch if its history went backwards: written under another master,
# or behind what a hub delivered in the same epoch. KEYS: meta, log. ARGV: a new epoch, the
# delivered epoch and offset. Returns {offset, epoch, 0 | 1 (moved under another master) |
# 2 (moved: behind), the current master}; {0, "", 0, master} when the channel has no history.
_CHECK = LuaScript(
    _THIS_MASTER
    + """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'master')
if not meta[1] then
  return {0, '', 0, master}
end
local moved = 0
if meta[3] and meta[3] ~= master then
  moved = 1
elseif meta[1] == ARGV[2] and tonumber(meta[2]) < tonumber(ARGV[3]) then
  moved = 2
end
if moved == 0 then
  return {tonumber(meta[2]), meta[1], 0, master}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0, 'master', master)
return {0, ARGV[1], moved, master}
"""
)


# The position of many channels: KEYS are their meta hashes. Returns {the current master, then
# epoch, offset, master for each} (false where a field is missing). One command for a slice of
# the position checks, where a pipeline of HMGETs cost redis-py more than Redis (issue 17).
_POSITIONS = LuaScript(
    _THIS_MASTER
    + """
local reply = {master}
for _, key in ipairs(KEYS) do
  local meta = redis.call('HMGET', key, 'epoch', 'offset', 'master')
  reply[#reply + 1] = meta[1]
  reply[#reply + 1] = meta[2]
  reply[#reply + 1] = meta[3]
end
return reply
"""
)


class RedisHistory:
    """History in Redis: a hash {epoch, offset} and a stream whose entry ids are the offsets."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def _keys(self, channel: str) -> tuple[str, str]:
        base = f"{self._prefix}:h:{in_keys(channel)}"
        return f"{base}:meta", f"{base}:log"

    async def erase(self, channel: str) -> None:
        await get_redis().delete(*self._keys(channel))

    async def append(self, items: Sequence[Append], send: SendFrom | None = None) -> list[Stored]:
        """One script call per channel, all in one round trip; a channel's items keep their order.
        With `send`, the same calls PUBLISH the frames to the channels' layer groups.
        With NOTIFIER_REPLICA_ACKS, WAIT follows in the same round trip; NotReplicated (holding
        what was stored) when too few replicas acknowledged in time."""
        by_channel: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            by_channel.setdefault(item.channel, []).append(index)
        calls = []
        for channel, indexes in by_channel.items():
            first = items[indexes[0]]
            tails = [items[i].template.tail for i in indexes]
            target = ["", channel, 0, "", ""]
            if send is not None:
                target = [send.target(channel), channel, send.message_bytes, send.message_type, send.command]
            args = [new_epoch(), first.size, first.ttl_secs, *target, first.template.head, *tails]
            calls.append((self._keys(channel), args))
        replicas = Replicas.required()
        results, acked = await _APPEND.run_many_replicated(calls, replicas)
        stored: list[Stored | None] = [None] * len(items)
        moved = sum(int(result[2]) for result in results)
        if moved:
            rewinds.noticed(_text(results[0][3]), moved, rewinds.MASTER_CHANGED)
        for indexes, (first_offset, epoch, *_) in zip(by_channel.values(), results, strict=True):
            epoch = _text(epoch)
            for offset, index in enumerate(indexes, start=int(first_offset)):
                stored[index] = Stored(Position(offset, epoch), items[index].template.render(offset, epoch))
        if acked < replicas.count:
            raise NotReplicated(stored, acked, replicas.count)  # type: ignore[arg-type]  # every index was filled
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
        return [_meta_position(epoch, offset) for epoch, offset in rows]

    async def check(self, delivered: Sequence[tuple[str, Position]]) -> list[Position]:
        """The latest position of each channel, after moving to a new epoch those whose history
        went backwards: written under another Redis master (a failover or restore since), or
        behind the position this process delivered, in its epoch. One round trip, and one more
        only for the channels that need moving."""
        metas = [self._keys(channel)[0] for channel, _ in delivered]
        chunks = [
            group[i : i + KEYS_PER_SCRIPT_CALL]
            for group in same_slot(metas, range(len(metas)))
            for i in range(0, len(group), KEYS_PER_SCRIPT_CALL)
        ]
        replies = await _POSITIONS.run_many([([metas[i] for i in chunk], []) for chunk in chunks])
        positions: list[Position] = [Position(0, "")] * len(delivered)
        suspect = []
        for chunk, reply in zip(chunks, replies, strict=True):
            # The master that ran this call (each node has its own in a cluster). INFO refused
            # (an ACL): "", as the scripts record then; only the behind-check applies.
            master = _text(reply[0])
            for index, i in enumerate(chunk):
                epoch, offset, written_by = reply[1 + 3 * index : 4 + 3 * index]
                latest = positions[i] = _meta_position(epoch, offset)
                position = delivered[i][1]
                foreign = written_by is not None and _text(written_by) != master
                if epoch and (foreign or (latest.epoch == position.epoch and latest.offset < position.offset)):
                    suspect.append(i)
        if suspect:
            calls = [
                (self._keys(delivered[i][0]), [new_epoch(), delivered[i][1].epoch, delivered[i][1].offset])
                for i in suspect
            ]
            for index, (offset, epoch, moved, current) in zip(suspect, await _CHECK.run_many(calls), strict=True):
                positions[index] = Position(int(offset), _text(epoch))
                if int(moved):
                    reason = rewinds.MASTER_CHANGED if int(moved) == 1 else rewinds.HISTORY_BEHIND
                    rewinds.noticed(_text(current), 1, reason)
        return positions


def _meta_position(epoch: bytes | None, offset: bytes | None) -> Position:
    """A channel's position from its meta hash's fields; (0, "") where it has no history."""
    return Position(int(offset or 0), _text(epoch)) if epoch else Position(0, "")


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

    async def append(self, items: Sequence[Append], send: SendFrom | None = None) -> list[Stored]:
        assert send is None, "in-process history sends nothing: the in-memory layer has no script"
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

    async def check(self, delivered: Sequence[tuple[str, Position]]) -> list[Position]:
        """Process memory never goes backwards: the latest positions."""
        return await self.positions([channel for channel, _ in delivered])

    async def erase(self, channel: str) -> None:
        self._logs.pop(channel, None)


_memory_history = MemoryHistory()


def get_history() -> History:
    """The history backend of this process: Redis when configured, else process memory."""
    if notifier_settings.embedded:
        return _memory_history
    return RedisHistory(notifier_settings.REDIS_PREFIX)
