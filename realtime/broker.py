"""The channel layer between publishers and hubs: channels-redis's pub/sub layer, whose reader
gets back to Redis fast after a failover and tells the hubs when it did.

channels-redis's reader sleeps one second after every failed read and logs a traceback each
time, so after a Sentinel failover a hub went on missing live events for seconds while
publishers had already moved to the new master. This reader retries after 50 ms, doubling to 1 s
while Redis stays away, logs one warning per outage, and once it reads again puts a
`hub.resync` message in each of its layer channels: the hubs then check their channels'
positions at once, delivering from history what was published while the reader was away
(pub/sub is at-most-once; history is what makes delivery whole).

It overrides one private method of channels_redis 4.3 (`RedisSingleShardConnection._do_receiving`,
using `_pubsub` and `_receive_message`); tests/test_broker.py fails loudly if a new release
changes that shape.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels_redis import pubsub
from channels_redis.utils import _wrap_close

from . import metrics

logger = logging.getLogger(__name__)

RESYNC = "hub.resync"
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
        for name, queue in self.channel_layer.channels.items():
            if self.channel_layer._get_shard(name) is self:
                queue.put_nowait(resync)


class _LoopLayer(pubsub.RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards: list[_Shard] = [_Shard(shard.host, self) for shard in self._shards]


class PubSubLayer(pubsub.RedisPubSubChannelLayer):
    """CHANNEL_LAYERS' backend in production: channels_redis.pubsub with the reader above."""

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer
