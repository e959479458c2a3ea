"""Compare the channels-redis layers for the hub's traffic: one group, one member per process.

Starts RECEIVERS receiver processes (each a hub stand-in: one layer channel joined to the
group) and one publisher that group_sends MESSAGES messages as fast as it can, then prints
publish rate, delivery rate, latency and lost messages for each layer class.

    .venv/bin/python bench/layers.py            # starts its own redis-server on a free port
    .venv/bin/python bench/layers.py REDIS_URL  # or measures against the given Redis
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

MESSAGES = 20_000
RECEIVERS = 2
LAYERS = {
    "core (RedisChannelLayer)": ("channels_redis.core", "RedisChannelLayer", {"capacity": 100}),
    "core, capacity 100k": ("channels_redis.core", "RedisChannelLayer", {"capacity": 100_000}),
    "pub/sub (RedisPubSubChannelLayer)": ("channels_redis.pubsub", "RedisPubSubChannelLayer", {}),
}


def make_layer(spec: tuple[str, str, dict[str, Any]], url: str) -> Any:
    module, name, config = spec
    cls = getattr(__import__(module, fromlist=[name]), name)
    return cls(hosts=[url], **config)


def receiver(spec: tuple[str, str, dict[str, Any]], url: str, ready: Any, results: Any) -> None:
    async def run() -> None:
        layer = make_layer(spec, url)
        channel = await layer.new_channel()
        await layer.group_add("bench", channel)
        ready.put(True)
        latencies, seen = [], 0
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 3)
            except TimeoutError:
                break
            if message.get("n") == -1:
                continue
            seen += 1
            latencies.append(time.time() - message["t"])
        results.put({"seen": seen, "latencies": latencies})

    asyncio.run(run())


def measure(label: str, spec: tuple[str, str, dict[str, Any]], url: str) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=receiver, args=(spec, url, ready, results)) for _ in range(RECEIVERS)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=30)

    async def publish() -> float:
        layer = make_layer(spec, url)
        await layer.group_send("bench", {"type": "x", "n": -1, "t": time.time()})
        start = time.perf_counter()
        for n in range(MESSAGES):
            await layer.group_send("bench", {"type": "x", "n": n, "t": time.time(), "frame": "x" * 200})
        return time.perf_counter() - start

    elapsed = asyncio.run(publish())
    received = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    latencies = sorted(lat for r in received for lat in r["latencies"])
    delivered = sum(r["seen"] for r in received)
    return {
        "layer": label,
        "publish/s": round(MESSAGES / elapsed),
        "delivered": f"{delivered}/{MESSAGES * RECEIVERS}",
        "lost": MESSAGES * RECEIVERS - delivered,
        "p50 ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99 ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1) if latencies else None,
    }


def main() -> None:
    server = None
    if len(sys.argv) > 1:
        url = sys.argv[1]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen(  # noqa: S603 - our own redis-server for the run
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],  # noqa: S607
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    try:
        for label, spec in LAYERS.items():
            print(json.dumps(measure(label, spec, url)), flush=True)
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
