"""The channel layer between publishers and hubs: what travels on it, and how.

Messages, one Channels group per channel (`group_of(channel)`), each hub a member for the
channels it has subscribers for:

- `{"type": "hub.event", "channel", "offset", "epoch", "frames": [<event frame text>, …]}`:
  a channel's consecutive frames from `offset` on, encoded once by `publish()`, at most
  MESSAGE_BYTES of them (one frame always fits). Releases before "frames" sent `"frame"`.
- `{"type": "hub.presence", "channel", "kind", "frame"}`: a `join` or `leave` frame (`kind`),
  no offset, not in history. Releases before "kind" sent none: `presence_kind` reads it from
  the frame.
- `{"type": "hub.resync"}`: put by this process's reader in its own hub's channel (never sent)
  when it reads again after losing Redis.

The guarantee is at most once: channels-redis's pub/sub layer drops what was in flight when a
connection breaks, and a hub that was not subscribed at that moment never sees it. Nothing
relies on more: events are in history before they are sent, and the hub delivers by offset,
filling gaps from history (realtime/hub.py). That is what makes delivery whole.

Two things here reach into channels_redis 4.3 (pinned), both checked by tests/test_broker.py,
which fails loudly if a new release changes their shape:

- Publishing a batch: `RedisPubSubChannelLayer.group_send` takes a lock and waits for each
  PUBLISH in turn, so several messages go out as one pipeline per shard instead (the layer's
  `_get_group_channel_name`, `_get_shard`, and the shard's `_lock`, `_ensure_redis`, `_redis`).
- The reader: channels-redis's sleeps one second after every failed read and logs a traceback
  each time, so after a Sentinel failover a hub went on missing live events for seconds while
  publishers had already moved to the new master. This reader (`_Shard._do_receiving`, using
  `_pubsub` and `_receive_message`) retries after 50 ms, doubling to 1 s while Redis stays
  away, logs one warning per outage, and once it reads again puts a `hub.resync` message in
  each of its layer channels: the hubs then check their channels' positions at once,
  delivering from history what was published while the reader was away.

This module is the seam where another backend (Redis Cluster's sharded pub/sub) plugs in.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from channels.layers import get_channel_layer
from channels_redis import pubsub
from channels_redis.serializers import MsgPackSerializer
from channels_redis.utils import _wrap_close
from redis.exceptions import ConnectionError as RedisConnectionError

from . import frames, metrics
from .channels import group_of
from .history import Append, SendFrom, Stored

logger = logging.getLogger(__name__)

EVENT = "hub.event"
PRESENCE = "hub.presence"
RESYNC = "hub.resync"
MESSAGE_BYTES = 256 * 1024  # a message holds one frame, or several up to this size
FIRST_RETRY_SECS = 0.05
MAX_RETRY_SECS = 1.0
READ_TIMEOUT_SECS = 0.1  # channels-redis's own: how long one read waits for a message


class _Shard(pubsub.RedisSingleShardConnection):
    async def _do_receiving(self) -> None:
        delay = 0.0  # > 0 while Redis is away
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_TIMEOUT_SECS)
                    if delay:
                        delay = 0.0
                        self._reconnected()
                    self._receive_message(message)
                else:
                    await asyncio.sleep(READ_TIMEOUT_SECS)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: retry soon, say so once
                if not delay:
                    logger.warning("channel layer lost Redis (%s: %s); reconnecting", type(exc).__name__, exc)
                    metrics.inc("notifier_redis_errors", operation="layer_receive")
                delay = min(MAX_RETRY_SECS, max(FIRST_RETRY_SECS, 2 * delay))
                await asyncio.sleep(delay)

    def _reconnected(self) -> None:
        logger.warning("channel layer reconnected to Redis; hubs check their channels' positions")
        resync = self.channel_layer.channel_layer.serialize({"type": RESYNC})
        for queue in self.channel_layer.channels.values():  # every local channel: groups span the shards
            queue.put_nowait(resync)


class _LoopLayer(pubsub.RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards: list[_Shard] = [_Shard(shard.host, self) for shard in self._shards]


class PubSubLayer(pubsub.RedisPubSubChannelLayer):
    """CHANNEL_LAYERS' backend in production: channels_redis.pubsub with the reader above.

    `history_redis: True` in its CONFIG (notifier/settings.py sets it) says its one host is the
    Redis history lives in: then history's append script publishes the frames it stores itself
    (`script_send`).
    """

    def __init__(self, *args: Any, history_redis: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history_redis = history_redis

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer


# -- sending ---------------------------------------------------------------------------------

Message = tuple[str, dict[str, Any]]  # (group, message)


def script_send(layer: Any) -> SendFrom | None:
    """How history's append script may PUBLISH the frames it stores, as `group_send` would, or
    None when they must go through `send_events`.

    In the script, a publish is one round trip instead of two, no PUBLISH waits on the layer's
    lock, and no event is ever stored but not sent, nor sent out of offset order. That needs our
    layer on the history's Redis with one host, and channels-redis's plain msgpack serializer
    (no encryption, no prefix), whose bytes Redis's cmsgpack writes the same way
    (tests/test_broker.py holds the two to each other).
    """
    if not isinstance(layer, PubSubLayer) or not layer.history_redis or len(layer._kwargs.get("hosts") or []) != 1:
        return None
    serializer = layer._serializer
    if type(serializer) is not MsgPackSerializer or serializer.crypter or serializer.random_prefix_length:
        return None
    return SendFrom(f"{layer._kwargs.get('prefix', 'asgi')}__group__", EVENT, MESSAGE_BYTES)


async def send_events(layer: Any, items: Sequence[Append], stored: Sequence[Stored]) -> None:
    """Send stored frames to their channels' groups on `layer`: one message per channel run,
    all in one round trip where the layer allows it."""
    await send_messages(layer, event_messages(items, stored))


async def send_presence(channel: str, kind: str, user: str) -> None:
    """Send `user`'s join or leave (`kind`) to the channel's subscribers on every process (not
    in history)."""
    message = {"type": PRESENCE, "channel": channel, "kind": kind, "frame": frames.presence(kind, channel, user)}
    await get_channel_layer().group_send(group_of(channel), message)


def presence_kind(message: dict[str, Any]) -> str:
    """`join` or `leave`: what a presence message announces."""
    kind = message.get("kind")
    if kind is None:  # sent by a release before "kind", during a rolling upgrade
        kind = json.loads(message["frame"]).get("type", "message")
    return str(kind)


def event_messages(items: Sequence[Append], stored: Sequence[Stored]) -> list[Message]:
    """(group, message) per channel: `frames` holds consecutive offsets from `offset` on, at
    most MESSAGE_BYTES of them (Redis disconnects a pub/sub reader that lags 8-32 MB)."""
    runs: dict[str, dict[str, Any]] = {}  # channel -> its message being filled
    sizes: dict[str, int] = {}  # channel -> bytes of frames in that message
    messages: list[Message] = []
    for item, record in zip(items, stored, strict=True):
        channel, position, frame = item.channel, record.position, record.frame
        run = runs.get(channel)
        if (
            run is None
            or run["epoch"] != position.epoch
            or run["offset"] + len(run["frames"]) != position.offset
            or sizes[channel] + len(frame) > MESSAGE_BYTES
        ):
            run = runs[channel] = {
                "type": EVENT,
                "channel": channel,
                "offset": position.offset,
                "epoch": position.epoch,
                "frames": [],
            }
            sizes[channel] = 0
            messages.append((group_of(channel), run))
        run["frames"].append(frame)
        sizes[channel] += len(frame)
    return messages


async def send_messages(layer: Any, messages: list[Message]) -> None:
    """group_send each message; on the Redis pub/sub layer with several messages, as one
    pipeline per Redis shard: the same pub/sub channels, serialized by the same layer, on the
    same connection (under the same lock), in order."""
    loop_layer = layer._get_layer() if isinstance(layer, pubsub.RedisPubSubChannelLayer) and len(messages) > 1 else None
    if loop_layer is None:
        for group, message in messages:
            try:
                await layer.group_send(group, message)
            except RedisConnectionError:  # a connection left stale by a Redis restart fails once
                await layer.group_send(group, message)
        return
    shards: dict[Any, list[tuple[str, bytes]]] = {}
    for group, message in messages:
        name = loop_layer._get_group_channel_name(group)
        shards.setdefault(loop_layer._get_shard(name), []).append((name, layer.serialize(message)))
    for shard, batch in shards.items():
        try:
            await _publish_pipelined(shard, batch)
        except RedisConnectionError:  # once more on a fresh connection (duplicates are dropped by offset)
            await _publish_pipelined(shard, batch)


async def _publish_pipelined(shard: Any, batch: list[tuple[str, bytes]]) -> None:
    async with shard._lock:
        shard._ensure_redis()
        async with shard._redis.pipeline(transaction=False) as pipe:
            for name, data in batch:
                pipe.publish(name, data)
            await pipe.execute()
