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

In cluster mode (NOTIFIER_REDIS_CLUSTER) the layer is `ShardedLayer`: the same messages over
Redis Cluster's sharded pub/sub (see its docstring); channels-redis has no cluster support.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import msgpack
from channels.layers import BaseChannelLayer, get_channel_layer
from channels_redis import pubsub
from channels_redis.serializers import MsgPackSerializer
from channels_redis.utils import _wrap_close
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from . import frames, metrics
from .channels import group_of
from .history import Append, SendFrom, Stored
from .redis import get_redis, node_client, owner_of

logger = logging.getLogger(__name__)

EVENT = "hub.event"
PRESENCE = "hub.presence"
RESYNC = "hub.resync"
MESSAGE_BYTES = 256 * 1024  # a message holds one frame, or several up to this size
FIRST_RETRY_SECS = 0.05
MAX_RETRY_SECS = 1.0
READ_TIMEOUT_SECS = 0.1  # channels-redis's own: how long one read waits for a message
HOMELESS_RETRY_SECS = 1.0  # ShardedLayer: how often subscriptions that found no node are tried again


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


# -- Redis Cluster ---------------------------------------------------------------------------


class ShardedLayer(BaseChannelLayer):
    """CHANNEL_LAYERS' backend in cluster mode: each group is a sharded pub/sub channel,
    `<prefix>:g:{<group>}`, on the node that owns its slot, the slot of the channel's history
    keys too (`channels.in_keys`). So a publish goes from the append script (SPUBLISH) to that
    shard only, and from it only to the processes subscribed (SSUBSCRIBE, one per group this
    process has members in). Layer channels (`new_channel`) are local queues: a hub receives
    from its own process only, which is all this project sends to a channel.

    Reading: one task per node this process has subscriptions on, each on a connection of its
    own. redis-py's ClusterPubSub is not used: it borrows its connections from RedisCluster's
    pools, which drop every connection at each slot-map refresh, so every refresh (and a
    failover makes several) broke every subscription. Redis pushes `sunsubscribe` when a slot
    moves (a migration, a failover), and a node's connection breaks when it dies: either way the
    slot map is refreshed and each subscription moves to its slot's owner
    (docs/design/redis-cluster.md). What was published meanwhile reached no hub live, so every
    local channel then gets a `hub.resync` (the hubs check their positions and fill gaps from
    history), as on one Redis.
    """

    extensions = ["groups"]

    def __init__(self, prefix: str = "notifier", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ShardedLoop] = weakref.WeakKeyDictionary()

    def shard_channel(self, group: str) -> str:
        return f"{self.prefix}:g:{{{group}}}"

    def send_from(self) -> SendFrom:
        """How the append script publishes to this layer (`script_send`)."""
        return SendFrom(f"{self.prefix}:g:{{", EVENT, MESSAGE_BYTES, command="SPUBLISH", suffix="}")

    def _loop(self) -> _ShardedLoop:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _ShardedLoop(get_redis())
        return state

    async def new_channel(self, prefix: str = "specific.") -> str:
        name = f"{prefix}{uuid.uuid4().hex}"
        self._loop().queues[name] = asyncio.Queue()
        return name

    async def receive(self, channel: str) -> dict[str, Any]:
        queues = self._loop().queues
        queue = queues.get(channel)
        if queue is None:  # not made by new_channel (every hub's is)
            queue = queues[channel] = asyncio.Queue()
        message: dict[str, Any] = await queue.get()
        return message

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """To a layer channel of this process (the hub's own); others are not reachable here."""
        queue = self._loop().queues.get(channel)
        if queue is not None:
            queue.put_nowait(message)

    async def group_add(self, group: str, channel: str) -> None:
        state = self._loop()
        members = state.groups.setdefault(group, set())
        members.add(channel)
        if len(members) == 1:
            await state.subscribe(self.shard_channel(group), group)

    async def group_discard(self, group: str, channel: str) -> None:
        state = self._loop()
        members = state.groups.get(group)
        if members is None or channel not in members:
            return
        members.discard(channel)
        if not members:
            del state.groups[group]
            await state.unsubscribe(self.shard_channel(group))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await get_redis().spublish(self.shard_channel(group), msgpack.packb(message))

    async def group_send_many(self, messages: Sequence[Message]) -> None:
        """Several group_sends as one pipeline per node, all sent at once."""
        async with get_redis().pipeline(transaction=False) as pipe:
            for group, message in messages:
                pipe.spublish(self.shard_channel(group), msgpack.packb(message))
            await pipe.execute()

    async def flush(self) -> None:
        for state in list(self._loops.values()):
            await state.close()
        self._loops.clear()

    async def close(self) -> None:
        await self.flush()


class _SlotAwarePubSub(PubSub):
    """A node's PubSub that, reconnecting, subscribes again one slot at a time: the plain
    PubSub batches every shard channel in one SSUBSCRIBE, which Redis refuses (CROSSSLOT).
    redis-py's ClusterPubSub gives its own per-node PubSubs this same method."""

    _resubscribe_shard_channels = ClusterPubSub._resubscribe_shard_channels


class _NodeSubscriptions:
    """One node's shard subscriptions, on a connection of their own (not from RedisCluster's
    pools, whose connections it recycles at every slot-map refresh), and the task reading them."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.client = node_client(host, port)
        self.pubsub = _SlotAwarePubSub(self.client.connection_pool)
        self.reader: asyncio.Task[None] | None = None
        self.channels: set[bytes] = set()  # what this process holds here: the reader runs while any
        # redis-py's PubSub takes its connection on the first command: two first SSUBSCRIBEs at
        # once took two, and the one left unread kept its subscriptions (delivery then came
        # only from the hubs' position checks). One command at a time per node.
        self.lock = asyncio.Lock()

    async def subscribe(self, channel: bytes) -> None:
        self.channels.add(channel)
        async with self.lock:
            await self.pubsub.ssubscribe(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        self.channels.discard(channel)
        async with self.lock:
            await self.pubsub.sunsubscribe(channel)

    def forget(self, channel: bytes) -> None:
        """Drop `channel` without telling the node (it pushed `sunsubscribe` itself, or is down),
        so that a reconnect does not subscribe it here again."""
        self.channels.discard(channel)
        self.pubsub.shard_channels.pop(channel, None)
        self.pubsub.pending_unsubscribe_shard_channels.discard(channel)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()


class _ShardedLoop:
    """ShardedLayer's state on one event loop: its queues, groups, and subscriptions by node."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.groups: dict[str, set[str]] = {}  # group -> its members among the queues
        self.by_shard_channel: dict[bytes, str] = {}  # subscribed shard channel -> its group
        self.homes: dict[bytes, str] = {}  # subscribed shard channel -> the node holding it
        self.nodes: dict[str, _NodeSubscriptions] = {}  # node name -> its subscriptions
        self._rehoming: asyncio.Lock = asyncio.Lock()
        self._homeless: asyncio.Task[None] | None = None

    async def subscribe(self, shard_channel: str, group: str) -> None:
        channel = shard_channel.encode()
        self.by_shard_channel[channel] = group
        await self.cluster.initialize()
        if self._homeless is None:
            self._homeless = asyncio.get_running_loop().create_task(self._rehome_the_homeless())
        await self._subscribe_at_owner(channel)

    async def _rehome_the_homeless(self) -> None:
        """Channels whose new owner could not be reached when their slot moved (the cluster was
        still failing over) have no subscription: try again each second until they have."""
        while True:
            await asyncio.sleep(HOMELESS_RETRY_SECS)
            if len(self.homes) < len(self.by_shard_channel):
                await self._rehome()  # it logs and swallows what fails: this loop goes on

    async def unsubscribe(self, shard_channel: str) -> None:
        channel = shard_channel.encode()
        self.by_shard_channel.pop(channel, None)
        home = self.nodes.get(self.homes.pop(channel, ""))
        if home is not None:
            await home.unsubscribe(channel)

    async def _subscribe_at_owner(self, channel: bytes) -> None:
        owner = owner_of(self.cluster, channel.decode())
        home = self.nodes.get(owner.name)
        if home is None:
            home = self.nodes[owner.name] = _NodeSubscriptions(owner.name, owner.host, int(owner.port))
        self.homes[channel] = owner.name
        try:
            await home.subscribe(channel)
        except BaseException:
            self._forget(channel)  # homeless: tried again within HOMELESS_RETRY_SECS
            raise
        if home.reader is None or home.reader.done():
            home.reader = asyncio.get_running_loop().create_task(self._read(home))

    def _forget(self, channel: bytes) -> None:
        """Drop `channel` from the node that held it, without telling that node (it pushed
        `sunsubscribe` itself, or it is down)."""
        home = self.nodes.get(self.homes.pop(channel, ""))
        if home is not None:
            home.forget(channel)

    async def _read(self, home: _NodeSubscriptions) -> None:
        delay = 0.0  # > 0 while this node is away
        while home.channels:
            try:
                message = await home.pubsub.get_message(timeout=READ_TIMEOUT_SECS * 10)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - the node is away (killed, failing over): follow the slots
                if not delay:
                    logger.warning("channel layer lost Redis node %s (%s: %s)", home.name, type(exc).__name__, exc)
                    metrics.inc("notifier_redis_errors", operation="layer_receive")
                delay = min(MAX_RETRY_SECS, max(FIRST_RETRY_SECS, 2 * delay))
                await asyncio.sleep(delay)
                await self._rehome()
                continue
            if delay:
                delay = 0.0
                logger.warning(
                    "channel layer reads Redis node %s again; hubs check their channels' positions", home.name
                )
                self._resync()
            if message is not None:
                await self._on_message(message)
        if self.nodes.get(home.name) is home:
            del self.nodes[home.name]
        home.reader = None  # this task: ending now, not to be cancelled by close()
        await home.close()

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            group = self.by_shard_channel.get(channel)
            members = self.groups.get(group, ()) if group is not None else ()
            if members:
                data = msgpack.unpackb(message["data"], raw=False)
                for member in members:
                    queue = self.queues.get(member)
                    if queue is not None:
                        queue.put_nowait(data)
        elif kind == "sunsubscribe" and channel in self.by_shard_channel and channel in self.homes:
            # Pushed by Redis, not asked for: the channel's slot moved (a migration, a failover).
            logger.warning("channel layer: %s moved to another node; following it", channel.decode())
            self._forget(channel)
            await self._rehome()

    async def _rehome(self) -> None:
        """Refresh the slot map; subscribe each channel whose slot has another owner now (or
        that lost its home) there; then have the hubs check their positions, since what was
        published meanwhile reached no hub."""
        async with self._rehoming:
            try:
                await self.cluster.nodes_manager.initialize()
            except Exception as exc:  # noqa: BLE001 - the cluster is still failing over: the reader retries
                logger.debug("slot map refresh failed: %s", exc)
                return
            moved = 0
            for channel in list(self.by_shard_channel):
                try:
                    owner = owner_of(self.cluster, channel.decode()).name
                    if self.homes.get(channel) == owner:
                        continue
                    self._forget(channel)
                    await self._subscribe_at_owner(channel)
                    moved += 1
                except Exception as exc:  # noqa: BLE001 - no owner yet, or not reachable: retried in a second
                    logger.debug("subscribing %s where its slot is failed: %s", channel, exc)
            if moved:
                logger.warning("channel layer: %d channels follow their slots to new nodes", moved)
            self._resync()

    def _resync(self) -> None:
        for queue in self.queues.values():
            queue.put_nowait({"type": RESYNC})

    async def close(self) -> None:
        if self._homeless is not None:
            self._homeless.cancel()
            await asyncio.gather(self._homeless, return_exceptions=True)
        for home in list(self.nodes.values()):
            await home.close()
        self.nodes.clear()


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
    if isinstance(layer, ShardedLayer):
        return layer.send_from()
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
    if isinstance(layer, ShardedLayer) and len(messages) > 1:
        await layer.group_send_many(messages)
        return
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
