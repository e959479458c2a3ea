"""The Celery contract through real processes: a worker, and a sender that does not import our code."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import RedisServer, Server, Worker, service_env
from .wsclient import Client

pytestmark = pytest.mark.integration

TASKS = 1000
WARM_UP = 300

# Runs in a separate interpreter from "/", with only celery importable: a foreign service.
SENDER = """
import json, sys
from celery import Celery
app = Celery(broker=sys.argv[1])
channel, first, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
key = sys.argv[5] if len(sys.argv) > 5 else None
for n in range(first, first + count):
    kwargs = {"channel": channel, "event": "task", "data": {"n": n}}
    if key:
        kwargs["idempotency_key"] = key
    app.send_task("notifier.notify", kwargs=kwargs)
print(json.dumps({"sent": count}))
"""


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[tuple[Server, Worker]]:
    env = service_env(redis_server.url, service_db)
    server, worker = Server(env, workdir), Worker(env, workdir)
    yield server, worker
    worker.stop()
    server.stop()


def send_tasks(broker: str, channel: str, first: int, count: int, key: str = "") -> None:
    result = subprocess.run(
        [sys.executable, "-c", SENDER, broker, channel, str(first), str(count), key],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"sent": count}


async def test_task_sent_by_name_is_delivered(stack: tuple[Server, Worker], redis_server: RedisServer) -> None:
    server, _ = stack
    channel = f"celery.{uuid.uuid4().hex[:8]}"
    client = await Client.connect(server.ws)
    await client.subscribe(channel)
    send_tasks(redis_server.url, channel, 0, 3)
    events = await client.events(3, timeout=30)
    # Two worker processes may finish in any order; offsets are still 1..3 with no gap.
    assert sorted(e["data"]["n"] for e in events) == [0, 1, 2]
    assert [e["offset"] for e in events] == [1, 2, 3]
    await client.close()


async def test_redis_clients_stay_flat_over_a_thousand_tasks(
    stack: tuple[Server, Worker], redis_server: RedisServer
) -> None:
    server, worker = stack
    channel = f"celery.{uuid.uuid4().hex[:8]}"
    client = await Client.connect(server.ws)
    await client.subscribe(channel)
    server_name = f"notifier-{server.proc.pid}"

    def worker_side_clients() -> int:
        """Every Redis client but the server process's own (its pool may grow with its load)."""
        with redis_server.client() as redis:
            return sum(1 for c in redis.client_list() if c["name"] != server_name and c["cmd"] != "client|list")

    def connections_received() -> int:
        """Connections Redis ever accepted: a client opened and closed per task shows here, not above."""
        with redis_server.client() as redis:
            return int(redis.info("stats")["total_connections_received"])

    # Warm up until each worker process has its steady connections (publishing, and the
    # once-a-second metrics flush that may overlap a publish), then count.
    send_tasks(redis_server.url, channel, 0, WARM_UP)
    await client.events(WARM_UP, timeout=60)
    await asyncio.sleep(2.5)
    before = worker_side_clients()
    opened_before = connections_received()

    send_tasks(redis_server.url, channel, WARM_UP, TASKS)
    events = await client.events(TASKS, timeout=120)
    await asyncio.sleep(2.5)
    after = worker_side_clients()
    opened = connections_received() - opened_before

    assert sorted(e["data"]["n"] for e in events) == list(range(WARM_UP, WARM_UP + TASKS))
    assert [e["offset"] for e in events] == list(range(WARM_UP + 1, WARM_UP + 1 + TASKS))
    print(f"redis clients: {before} before, {after} after {TASKS} tasks; {opened} connections opened meanwhile")
    # A leak opens a client per task (hundreds here). A bounded pool may still open one or two
    # more when publishes overlap the metrics flush on a busy machine: that is not a leak.
    assert after <= before + 2, f"Redis client count grew from {before} to {after} over {TASKS} tasks"
    # The sending script's own connections and this check's are a handful; one per task is a thousand.
    assert opened <= 25, f"{opened} Redis connections were opened over {TASKS} tasks"
    assert "Task notifier.notify" in worker.log()
    await client.close()


async def test_tasks_with_one_idempotency_key_deliver_once(
    stack: tuple[Server, Worker], redis_server: RedisServer
) -> None:
    server, _ = stack
    channel = f"celery.{uuid.uuid4().hex[:8]}"
    client = await Client.connect(server.ws)
    await client.subscribe(channel)
    send_tasks(redis_server.url, channel, 0, 5, key="same-key")
    send_tasks(redis_server.url, channel, 100, 1)  # a marker after the duplicates
    events = await client.events(2, timeout=30)
    assert [e["offset"] for e in events] == [1, 2]
    assert events[1]["data"] == {"n": 100}
    await client.close()


# -- RabbitMQ: the broker of the Redis Cluster mode (kombu cannot use a cluster) ---------------


async def test_tasks_through_rabbitmq_are_delivered_once_each_in_order(
    redis_server: RedisServer, service_db: str, workdir: Path, rabbitmq_vhost: str
) -> None:
    env = service_env(redis_server.url, service_db, CELERY_BROKER_URL=rabbitmq_vhost)
    server, worker = Server(env, workdir), Worker(env, workdir)
    try:
        assert "amqp://guest:**@127.0.0.1:5672/notifier-test-" in worker.log()  # the banner names its broker
        channel = f"celery.amqp.{uuid.uuid4().hex[:8]}"
        client = await Client.connect(server.ws)
        await client.subscribe(channel)
        send_tasks(rabbitmq_vhost, channel, 0, 200)
        send_tasks(rabbitmq_vhost, channel, 1000, 3, key="one-key")
        events = await client.events(201, timeout=120)
        assert sorted(e["data"]["n"] for e in events if e["data"]["n"] < 1000) == list(range(200))
        assert [e["offset"] for e in events] == list(range(1, 202))
        assert sum(e["data"]["n"] >= 1000 for e in events) == 1  # one idempotency key: one event
        assert await client.nothing_within(1.0)
        await client.close()
    finally:
        worker.stop()
        server.stop()
