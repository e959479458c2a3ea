"""realtime.broker: the pub/sub layer's reader after Redis went away, on a real Redis; and the
shape of channels_redis it relies on, so a new release that changes it fails here, loudly."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

from channels_redis import pubsub
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.broker import RESYNC, PubSubLayer, send_messages

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
