"""The scheduling scenario of `make bench` (issue 15): dispatch lag and backlog drain.

One server process and one Celery worker with beat (`-B`, `--concurrency 2`: its dispatch
ticks every NOTIFIER_DISPATCH_SECS), on a PostgreSQL database of the run's own. A WebSocket
client subscribes to CHANNELS channels. Lag: RATE scheduled events/s (batches of 20 every
0.1 s, each event due 2 s after it was sent) for LAG_SECS; each event's lag is when the client
got it minus its `deliver_at`. Drain: BACKLOG events all due at one moment; the rate is the
backlog over the time from that moment to the last event received.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import websockets

from realtime.events import rfc3339

from .inbox import postgres_database
from .services import BenchError, Worker, manage, post_json, service_env

if TYPE_CHECKING:
    from .run import Bench

RATE = 200
LAG_SECS = 20.0
BACKLOG = 10_000
CHANNELS = 10
AHEAD_SECS = 2.0


def _rfc3339(moment: float) -> str | None:
    return rfc3339(datetime.fromtimestamp(moment, UTC))


class Receiver:
    """A WebSocket client on every channel, noting when each event id arrived (in a thread)."""

    def __init__(self, ws_url: str) -> None:
        self.arrived: dict[str, float] = {}
        self.duplicated = 0
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(ws_url),), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise BenchError("the scheduling bench's WebSocket client did not subscribe")

    async def _run(self, ws_url: str) -> None:
        async with websockets.connect(ws_url, max_size=None) as ws:
            await ws.recv()  # hello
            for n in range(CHANNELS):
                await ws.send(json.dumps({"op": "subscribe", "channel": f"sched{n}"}))
                await ws.recv()
            self._ready.set()
            while not self._stop:
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                except TimeoutError:
                    continue
                if frame.get("type") == "event":
                    if frame["id"] in self.arrived:
                        self.duplicated += 1
                    self.arrived.setdefault(frame["id"], time.time())

    def wait_for(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ids.issubset(self.arrived) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)


def _schedule(url: str, key: str, events: list[dict[str, Any]]) -> list[str]:
    status, answer = post_json(f"{url}/api/notify/batch", {"events": events}, key)
    errors = [r for r in answer.get("results", [answer]) if "error" in r] if status == 202 else [answer]
    if errors:
        raise BenchError(f"scheduling: {status}, {len(errors)} refused: {str(errors[0])[:300]}")
    return [r["id"] for r in answer["results"]]


def _lag(url: str, key: str, receiver: Receiver, seconds: float) -> tuple[list[float], int]:
    """Lags (seconds) of RATE scheduled events/s for `seconds`, and how many were lost."""
    due: dict[str, float] = {}
    started, n = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        tick = started + n * 0.1
        time.sleep(max(0.0, tick - time.monotonic()))
        at = time.time() + AHEAD_SECS
        events = [
            {"channel": f"sched{i % CHANNELS}", "event": "lag", "deliver_at": _rfc3339(at)} for i in range(RATE // 10)
        ]
        for event_id in _schedule(url, key, events):
            due[event_id] = at
        n += 1
    receiver.wait_for(set(due), AHEAD_SECS + 30)
    lags = [receiver.arrived[i] - at for i, at in due.items() if i in receiver.arrived]
    return lags, len(due) - len(lags)


def _drain(url: str, key: str, receiver: Receiver, count: int) -> tuple[float, float, int]:
    """(events/s, seconds from the due moment to the last event, lost) for a backlog of `count`."""
    at = time.time() + max(3.0, count / 800)  # time to schedule them all first
    ids: set[str] = set()
    scheduling_started = time.time()
    for first in range(0, count, 100):
        events = [
            {"channel": f"sched{i % CHANNELS}", "event": "drain", "deliver_at": _rfc3339(at)}
            for i in range(first, min(first + 100, count))
        ]
        ids.update(_schedule(url, key, events))
    print(f"  {count:,} events scheduled at {count / (time.time() - scheduling_started):,.0f} events/s", flush=True)
    if time.time() >= at:
        raise BenchError("the backlog took longer to schedule than its lead time")
    receiver.wait_for(ids, (at - time.time()) + 600)
    got = [receiver.arrived[i] for i in ids if i in receiver.arrived]
    took = max(got) - at if got else float("inf")
    return len(got) / max(took, 1e-9), took, count - len(got)


def run(bench: Bench, Row: Any, fmt: Callable[..., str]) -> None:  # noqa: N803 - bench.run's Row class
    lag_secs, backlog = (3.0, 1000) if bench.smoke else (LAG_SECS, BACKLOG)
    with postgres_database(f"notifier_bench_sched_{os.getpid()}") as db_url:
        extra = {"DATABASE_URL": db_url}
        env = {**service_env(bench.redis.url, bench.db), **extra}
        manage(env, "migrate", "--verbosity", "0")
        key = manage(env, "create_api_key", "bench-scheduling").strip().splitlines()[-1]
        with bench.servers("uvicorn", 1, **extra) as (server,):
            worker = Worker(env, bench.workdir, concurrency=2, beat=True)
            receiver = Receiver(server.ws)
            try:
                lags, lag_lost = _lag(server.http, key, receiver, lag_secs)
                rate, took, drain_lost = _drain(server.http, key, receiver, backlog)
            finally:
                receiver.stop()
                worker.stop()
    if not lags:
        raise BenchError("no scheduled event arrived")
    lags.sort()
    p50, p99 = statistics.median(lags), lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    bench.add(
        Row(
            "scheduling",
            f"dispatch lag: {RATE} scheduled events/s for {lag_secs:.0f} s, one worker -B --concurrency 2",
            f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
            f"max {lags[-1] * 1000:.0f} ms; {len(lags):,} events; target p99 <= 1000 ms",
            lag_lost,
            receiver.duplicated,
            target_met=p99 <= 1.0 and lag_lost == 0 and receiver.duplicated == 0,
            data={"p50_ms": p50 * 1000, "p99_ms": p99 * 1000, "max_ms": lags[-1] * 1000, "events": len(lags)},
        )
    )
    bench.add(
        Row(
            "scheduling",
            f"backlog: {backlog:,} events due at one moment, the same worker",
            fmt(rate, "events/s"),
            f"all published {took:.1f} s after their time",
            drain_lost,
            receiver.duplicated,
            data={"events_per_sec": rate, "seconds": took},
        )
    )
