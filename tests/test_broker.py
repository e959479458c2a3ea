"""realtime.broker: the pub/sub layer's reader after Redis went away, on a real Redis; and the
shape of channels_redis it relies on, so a new release that changes it fails here, loudly."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

from channels.layers import InMemoryChannelLayer
from channels_redis import pubsub
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.broker import MESSAGE_BYTES, RESYNC, PubSubLayer, event_messages, script_send, send_messages
from realtime.channels import group_of
from realtime.frames import event_template
from realtime.history import Append, RedisHistory

from .support import RedisServer


def test_channels_redis_still_has_the_shape_the_broker_overrides() -> None:
    shard = pubsub.RedisSingleShardConnection
    assert inspect.iscoroutinefunction(shard._do_receiving), "RedisSingleShardConnection._do_receiving changed"
    assert callable(shard._receive_message) and callable(shard._ensure_redis)
    source = inspect.getsource(shard.__init__)
    for attribute in ("self._pubsub", "self.channel_layer", "self.host"):
        assert attribute in source, f"RedisSingleShardConnection no longer sets {attribute}"
    loop_layer = inspect.getsource(pubsub.RedisPubSubLoopLayer.__init__)
    assert "self._shards" in loop_layer and "self.channels" in loop_layer
    assert "self._layers" in inspect.getsource(pubsub.RedisPubSubChannelLayer.__init__)
    # send_messages: one pipeline per shard, under the shard's own lock and connection.
    assert callable(pubsub.RedisPubSubLoopLayer._get_group_channel_name)
    assert callable(pubsub.RedisPubSubLoopLayer._get_shard)
    for attribute in ("self._lock", "self._redis"):
        assert attribute in source, f"RedisSingleShardConnection no longer sets {attribute}"


async def test_a_batch_goes_out_in_one_pipeline_per_shard_in_order(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    layer = PubSubLayer(hosts=[redis_server.url])
    try:
        name = await layer.new_channel(prefix="hub.")
        await layer.group_add("g", name)
        await send_messages(layer, [("g", {"type": "m", "n": n}) for n in range(50)])
        got = [await asyncio.wait_for(layer.receive(name), 10) for _ in range(50)]
        assert [m["n"] for m in got] == list(range(50))
    finally:
        await layer.flush()
        redis_server.stop()


async def test_after_redis_comes_back_the_reader_resubscribes_and_tells_the_hub(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    layer = PubSubLayer(hosts=[redis_server.url])
    try:
        name = await layer.new_channel(prefix="hub.")
        await layer.send(name, {"type": "before"})
        assert (await asyncio.wait_for(layer.receive(name), 10))["type"] == "before"

        redis_server.stop()
        await asyncio.sleep(0.3)  # the reader notices and retries
        redis_server.start()
        assert await asyncio.wait_for(layer.receive(name), 20) == {"type": RESYNC}
        try:  # resubscribed: live messages arrive again
            await layer.send(name, {"type": "after"})
        except RedisConnectionError:  # the pooled publish connection was left stale: once, as publish() does
            await layer.send(name, {"type": "after"})
        assert (await asyncio.wait_for(layer.receive(name), 10))["type"] == "after"
    finally:
        await layer.flush()
        redis_server.stop()


async def test_the_history_script_publishes_what_group_send_would(tmp_path: Path, settings: Any) -> None:
    """The append script's own PUBLISH (broker.script_send) reaches the group's members as the
    very messages event_messages makes, split at MESSAGE_BYTES the same way, text intact."""
    redis_server = RedisServer(tmp_path)
    settings.NOTIFIER = {**settings.NOTIFIER, "REDIS_URL": redis_server.url}
    layer = PubSubLayer(hosts=[redis_server.url], history_redis=True)
    channel, big = "user:ünï", "x" * (MESSAGE_BYTES // 3)
    datas = [json.dumps("été ✓"), json.dumps(big), json.dumps(big), json.dumps(big), "null"]
    templates = [event_template(channel, f"id{n}", "e", data, 1.5) for n, data in enumerate(datas)]
    items = [Append(channel, template, 1000, 3600) for template in templates]
    try:
        send = script_send(layer)
        assert send is not None
        name = await layer.new_channel(prefix="hub.")
        await layer.group_add(group_of(channel), name)
        await asyncio.sleep(0.2)  # the SUBSCRIBE is in place before the publish
        stored = await RedisHistory("notifier").append(items, send)
        expected = [message for _, message in event_messages(items, stored)]
        assert len(expected) == 2  # the third large frame starts a second message
        got = [await asyncio.wait_for(layer.receive(name), 10) for _ in expected]
        assert got == expected
        assert json.loads(got[0]["frames"][0])["data"] == "été ✓"
    finally:
        await layer.flush()
        redis_server.stop()


def test_the_script_publishes_only_for_a_plain_msgpack_layer_on_the_history_redis() -> None:
    url = "redis://127.0.0.1:1/0"
    assert script_send(PubSubLayer(hosts=[url], history_redis=True)) is not None
    assert script_send(PubSubLayer(hosts=[url])) is None  # another Redis, perhaps
    assert script_send(PubSubLayer(hosts=[url, "redis://127.0.0.1:2/0"], history_redis=True)) is None
    encrypted = PubSubLayer(hosts=[url], history_redis=True, symmetric_encryption_keys=["k" * 32])
    assert script_send(encrypted) is None
    assert script_send(PubSubLayer(hosts=[url], history_redis=True, serializer_format="json")) is None
    assert script_send(InMemoryChannelLayer()) is None
    layer = PubSubLayer(hosts=[url], history_redis=True, prefix="svc")
    send = script_send(layer)
    group_send_name = pubsub.RedisPubSubLoopLayer(hosts=[url], prefix="svc")._get_group_channel_name("g")
    assert send is not None and send.prefix + "g" == group_send_name
