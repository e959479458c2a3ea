"""Prometheus metrics, aggregated across every server process and Celery worker.

Each process counts locally (a dict increment on the hot path) and flushes its deltas to Redis
once a second; gauges (open connections, subscriptions) are written per process with a short
TTL, so a dead process's gauges vanish. `/metrics` on any process renders the cluster's totals.
In the embedded mode there is one process and the local counts are rendered directly.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .bridge import background_loop
from .conf import notifier_settings
from .redis import get_redis

logger = logging.getLogger(__name__)

FLUSH_SECS = 1.0
GAUGE_TTL_SECS = 10
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "notifier_connections_opened": ("Connections accepted (WebSocket and SSE).", ("transport",)),
    "notifier_events_published": ("Events published, by where they came from.", ("source",)),
    "notifier_frames_delivered": ("Event frames handed to sockets.", ()),
    "notifier_gap_fills": ("Gaps in a channel's live offsets filled from history.", ()),
    "notifier_duplicates_dropped": ("Live events dropped because they were already delivered.", ()),
    "notifier_position_fills": ("Lost events found by the periodic position check.", ()),
    "notifier_resyncs": ("Gaps history no longer covered; subscribers were told to refetch.", ()),
    "notifier_epoch_changes": (
        "Channels moved to a new epoch because their history went backwards (a Redis failover or restore).",
        ("reason",),
    ),
    "notifier_slow_consumer_disconnects": ("Sockets closed with 4002 because they stopped reading.", ()),
    "notifier_redis_errors": ("Redis operations that failed.", ("operation",)),
    "notifier_pushes": (
        "Web Push attempts, by outcome: sent, retry, gone (subscription deleted), rejected, expired.",
        ("outcome",),
    ),
    "notifier_webhooks": (
        "Webhook attempts, by outcome: delivered, retry, failed, disabled (the endpoint failed for 24 h).",
        ("outcome",),
    ),
    "notifier_database_errors": ("Database operations that failed.", ("operation",)),
}
GAUGES: dict[str, str] = {
    "notifier_open_connections": "Open connections.",
    "notifier_subscriptions": "Channel subscriptions of open connections.",
    "notifier_joined_channels": "Channels whose group a server process has joined.",
}
HISTOGRAM = "notifier_publish_latency_seconds"


class HubStats(Protocol):
    """What the metrics read of a hub (realtime.hub.Hub)."""

    connections: Any
    stats: Any

    def joined_channels(self) -> list[str]: ...

    def subscriber_count(self, channel: str) -> int: ...


# This process's hubs. realtime.process sets it: metrics stays below the hub in the imports.
hub_source: Callable[[], Sequence[HubStats]] = list

Labels = tuple[tuple[str, str], ...]


class LocalMetrics:
    """This process's counts since the last flush (and, embedded, since start)."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, Labels], float] = defaultdict(float)
        self.buckets: list[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum: float = 0.0
        self._flusher: asyncio.Task[None] | None = None
        self._flusher_loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False  # the process is exiting: its last flush was done

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += value
        self._ensure_flusher()

    def observe_publish(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self._ensure_flusher()

    def take(self) -> tuple[dict[tuple[str, Labels], float], list[int], float]:
        taken = (dict(self.counters), self.buckets, self.latency_sum)
        self.counters = defaultdict(float)
        self.buckets, self.latency_sum = [0] * (len(LATENCY_BUCKETS) + 1), 0.0
        return taken

    def stop_flusher(self) -> None:
        """No more periodic flushes (they would write the gauges of an exiting process again)."""
        self._stopped = True
        if self._flusher is not None and self._flusher is not _current_task():
            self._flusher.cancel()
        self._flusher = None

    def _ensure_flusher(self) -> None:
        if notifier_settings.embedded or self._stopped:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # sync code (a Celery task): flush from this process's publishing loop
            if self._flusher is None or self._flusher.done():
                background_loop().call_soon_threadsafe(self._ensure_flusher)
            return
        if self._flusher is None or self._flusher.done() or self._flusher_loop is not loop:
            self._flusher_loop = loop
            self._flusher = loop.create_task(_flush_forever())


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


local = LocalMetrics()
_embedded_totals = LocalMetrics()


def inc(name: str, value: float = 1, **labels: str) -> None:
    """Count something; cheap enough for the hot path."""
    (_embedded_totals if notifier_settings.embedded else local).inc(name, value, **labels)


def observe_publish(seconds: float) -> None:
    (_embedded_totals if notifier_settings.embedded else local).observe_publish(seconds)


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _keys() -> tuple[str, str]:
    prefix = notifier_settings.REDIS_PREFIX
    return f"{prefix}:metrics:counters", f"{prefix}:metrics:gauges:"


def _field(name: str, labels: Labels) -> str:
    return name + "".join(f"|{k}={v}" for k, v in labels)


def _gauges() -> dict[str, int]:
    hubs = hub_source()
    return {
        "notifier_open_connections": sum(len(h.connections) for h in hubs),
        "notifier_subscriptions": sum(len(c.subscriptions) for h in hubs for c in h.connections),
        "notifier_joined_channels": sum(len(h.joined_channels()) for h in hubs),
    }


def local_channel_counts() -> dict[str, int]:
    """Subscribers per channel on this process's hubs."""
    counts: dict[str, int] = defaultdict(int)
    for hub in hub_source():
        for channel in hub.joined_channels():
            counts[channel] += hub.subscriber_count(channel)
    return dict(counts)


async def channel_counts() -> dict[str, int]:
    """Subscribers per channel across every live process (refreshed each second)."""
    if notifier_settings.embedded:
        return local_channel_counts()
    redis = get_redis()
    totals: dict[str, int] = defaultdict(int)
    async for key in redis.scan_iter(match=f"{notifier_settings.REDIS_PREFIX}:metrics:channels:*", count=1000):
        for channel, count in (await redis.hgetall(key)).items():
            totals[_text(channel)] += int(count)
    return dict(totals)


def _hub_counters() -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for hub in hub_source():
        for name, value in hub.stats.take_deltas().items():
            totals[name] += value
    return totals


async def flush(final: bool = False) -> None:
    """Write this process's deltas and gauges to Redis (one round trip).

    `final` (the process is exiting, realtime/process.py): write the deltas and delete this
    process's gauges and channel counts at once, rather than leave them until they expire."""
    if final:
        local.stop_flusher()
    for hub_counter, delta in _hub_counters().items():
        local.counters[(hub_counter, ())] += delta
    counters, buckets, latency_sum = local.take()
    counters_key, gauges_prefix = _keys()
    try:
        async with get_redis().pipeline(transaction=False) as pipe:
            for (name, labels), value in counters.items():
                pipe.hincrbyfloat(counters_key, _field(name, labels), value)
            for index, count in enumerate(buckets):
                if count:
                    pipe.hincrby(counters_key, f"{HISTOGRAM}|bucket={index}", count)
            if any(buckets):
                pipe.hincrbyfloat(counters_key, f"{HISTOGRAM}|sum=total", latency_sum)
            gauges_key = gauges_prefix + process_id()
            channels_key = f"{notifier_settings.REDIS_PREFIX}:metrics:channels:{process_id()}"
            pipe.delete(channels_key)
            if final:
                pipe.delete(gauges_key)
            else:
                pipe.hset(gauges_key, mapping=dict(_gauges()))
                pipe.expire(gauges_key, GAUGE_TTL_SECS)
            counts = {} if final else local_channel_counts()
            if counts:
                pipe.hset(channels_key, mapping=counts)
                pipe.expire(channels_key, GAUGE_TTL_SECS)
            await pipe.execute()
    except Exception:
        # Put the deltas back: they are flushed when Redis returns.
        for key, amount in counters.items():
            local.counters[key] += amount
        local.buckets = [a + b for a, b in zip(local.buckets, buckets, strict=True)]
        local.latency_sum += latency_sum
        raise


async def _flush_forever() -> None:
    while True:
        await asyncio.sleep(FLUSH_SECS)
        try:
            await flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis down: keep counting, flush later
            logger.debug("metrics flush failed: %s", exc)


class _Snapshot(Collector):
    def __init__(self, counters: dict[str, float], gauges: dict[str, float]) -> None:
        self.counters, self.gauges = counters, gauges

    def collect(self) -> Iterator[Any]:
        by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for field, value in self.counters.items():
            name, *pairs = field.split("|")
            by_name[name].append((dict(pair.split("=", 1) for pair in pairs), value))
        for name, (doc, label_names) in COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=list(label_names))
            for labels, value in by_name.get(name, []):
                family.add_metric([labels.get(label, "") for label in label_names], value)
            yield family
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=self.gauges.get(name, 0))
        counts = [0.0] * (len(LATENCY_BUCKETS) + 1)
        latency_sum = 0.0
        for labels, value in by_name.get(HISTOGRAM, []):
            if "bucket" in labels:
                counts[int(labels["bucket"])] = value
            elif "sum" in labels:
                latency_sum = value
        cumulative, buckets = 0.0, []
        for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            HISTOGRAM, "Time to store and send one publish.", buckets=buckets, sum_value=latency_sum
        )


async def snapshot() -> CollectorRegistry:
    """Every process's counters and the live processes' gauges, as a registry to render."""
    if notifier_settings.embedded:
        for hub_counter, delta in _hub_counters().items():
            _embedded_totals.counters[(hub_counter, ())] += delta
        counters = {_field(n, labels): v for (n, labels), v in _embedded_totals.counters.items()}
        for index, count in enumerate(_embedded_totals.buckets):
            counters[f"{HISTOGRAM}|bucket={index}"] = count
        counters[f"{HISTOGRAM}|sum=total"] = _embedded_totals.latency_sum
        gauges: dict[str, float] = dict(_gauges())
    else:
        await flush()
        redis = get_redis()
        counters_key, gauges_prefix = _keys()
        raw = await redis.hgetall(counters_key)
        counters = {_text(k): float(v) for k, v in raw.items()}
        gauges = defaultdict(float)
        async for key in redis.scan_iter(match=gauges_prefix + "*", count=1000):
            per_process = await redis.hgetall(key)
            for gauge, amount in per_process.items():
                gauges[_text(gauge)] += float(amount)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(counters, dict(gauges)))
    return registry


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
