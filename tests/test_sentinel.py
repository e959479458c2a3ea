"""Redis behind Sentinel, through real processes: a master (and a replica), a Sentinel, a Daphne
server, a Celery worker, WebSocket clients.

The service's REDIS_URL names a port nothing listens on: with NOTIFIER_REDIS_SENTINELS set, only
its db number and password may be used, so every working path below went through the Sentinel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .support import RedisServer, SentinelServer, Server, Worker, free_port, manage, notify, post_json, service_env
from .support import wait_until as wait_for
from .test_security import get_json
from .wsclient import Client

pytestmark = pytest.mark.integration

MASTER_NAME = "mymaster"
DB = 3  # not 0, so the test sees REDIS_URL's db number applied
MASTER_PASSWORD = "master-secret"
SENTINEL_PASSWORD = "sentinel-secret"

# A foreign service sending a task through the Sentinels (only celery importable, run from "/").
SENDER = """
import json, sys
from celery import Celery
broker, options, kwargs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
app = Celery(broker=broker, broker_transport_options=options)
app.send_task("notifier.notify", kwargs=kwargs)
print("sent")
"""


def sentinel_env(
    sentinel: SentinelServer, service_db: str, password: str = "", sentinel_password: str = ""
) -> dict[str, str]:
    auth = f":{password}@" if password else ""
    env = service_env(
        f"redis://{auth}127.0.0.1:{free_port()}/{DB}",  # nothing listens there
        service_db,
        NOTIFIER_REDIS_SENTINELS=f"127.0.0.1:{sentinel.port}",
        NOTIFIER_REDIS_SENTINEL_MASTER=MASTER_NAME,
    )
    if sentinel_password:
        env["NOTIFIER_REDIS_SENTINEL_PASSWORD"] = sentinel_password
    return env


def client_names(port: int, password: str = "") -> set[str]:
    with redis.Redis(port=port, password=password or None, socket_timeout=5, decode_responses=True) as client:
        return {c["name"] for c in client.client_list()}


@pytest.fixture
def master_and_sentinel(workdir: Path) -> Iterator[tuple[RedisServer, SentinelServer]]:
    """A master that needs a password, watched by a Sentinel that needs its own."""
    master = RedisServer(workdir)
    master.command("CONFIG", "SET", "requirepass", MASTER_PASSWORD)
    sentinel = SentinelServer(
        workdir, master.port, MASTER_NAME, master_password=MASTER_PASSWORD, password=SENTINEL_PASSWORD
    )
    yield master, sentinel
    sentinel.stop()
    master.stop()


async def test_every_redis_user_goes_through_the_sentinel(
    master_and_sentinel: tuple[RedisServer, SentinelServer], service_db: str, workdir: Path, api_key: str
) -> None:
    master, sentinel = master_and_sentinel
    env = sentinel_env(sentinel, service_db, MASTER_PASSWORD, SENTINEL_PASSWORD)
    server = Server(env, workdir)
    worker: Worker | None = None
    try:
        worker = Worker(env, workdir)
        # /readyz: Redis (get_redis), its eviction policy, and a channel-layer round trip.
        status, ready = get_json(f"{server.http}/readyz", None)
        assert status == 200 and all(check["ok"] for check in ready["checks"].values()), ready

        channel = f"sentinel.{uuid.uuid4().hex[:8]}"
        client = await Client.connect(server.ws)
        await client.subscribe(channel)
        answer = notify(server, api_key, {"channel": channel, "event": "http", "data": {"n": 1}})
        (event,) = await client.events(1)
        assert (event["id"], event["offset"], event["data"]) == (answer["id"], 1, {"n": 1})

        # A Celery task, sent through the Sentinels the way another service would.
        broker = f"sentinel://:{MASTER_PASSWORD}@127.0.0.1:{sentinel.port}/{DB}"
        options = {"master_name": MASTER_NAME, "sentinel_kwargs": {"password": SENTINEL_PASSWORD}}
        sent = subprocess.run(
            [sys.executable, "-c", SENDER, broker, json.dumps(options), json.dumps({"channel": channel, "event": "t"})],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        (event,) = await client.events(1, timeout=30)
        assert (event["event"], event["offset"]) == ("t", 2)
        await client.close()

        # Django's cache (the embedded-mode rate counters; any other use) also finds the master.
        probe = uuid.uuid4().hex
        manage(env, "shell", "-c", f"from django.core.cache import cache; cache.set('{probe}', 'ok', 60)")

        names = client_names(master.port, MASTER_PASSWORD)
        assert f"notifier-{server.proc.pid}" in names, names  # the server's get_redis pool
        assert {n for n in names if n.startswith("notifier-")} - {f"notifier-{server.proc.pid}"}, names  # the worker's
        with redis.Redis(port=master.port, password=MASTER_PASSWORD, db=DB, decode_responses=True) as db:
            assert db.exists(f"notifier-cache:1:{probe}")
            assert db.exists("_kombu.binding.celery")  # the broker, in REDIS_URL's db
            assert any(channel in key for key in db.scan_iter("notifier*"))  # the channel's history
            assert "db0" not in db.info("keyspace"), db.info("keyspace")
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


async def test_a_subscriber_keeps_receiving_after_the_master_dies_and_sentinel_fails_over(
    service_db: str, workdir: Path, api_key: str
) -> None:
    master, replica = RedisServer(workdir), RedisServer(workdir)
    sentinel: SentinelServer | None = None
    server: Server | None = None
    try:
        replica.command("REPLICAOF", "127.0.0.1", str(master.port))
        wait_for(lambda: _info(replica, "master_link_status") == "up", what="the replica's link to the master")
        sentinel = SentinelServer(workdir, master.port, MASTER_NAME)
        wait_for(lambda: sentinel.replica_ports() == [replica.port], what="the Sentinel to find the replica")
        server = Server(sentinel_env(sentinel, service_db), workdir)

        channel = f"failover.{uuid.uuid4().hex[:8]}"
        client = await Client.connect(server.ws)
        await client.subscribe(channel)
        notify(server, api_key, {"channel": channel, "event": "before"})
        (event,) = await client.events(1)
        assert event["offset"] == 1
        # The history (offset 1) and the API key generation have reached the replica.
        wait_for(
            lambda: _info(replica, "master_repl_offset") == _info(master, "master_repl_offset"),
            what="the replica to catch up",
        )

        master.stop()  # SIGKILL: the master is gone, not demoted
        started = time.monotonic()
        wait_for(lambda: sentinel.master_address() == ("127.0.0.1", replica.port), timeout=30, what="the failover")
        failover_secs = time.monotonic() - started

        # A backend retries a 503 (with its idempotency key) while the service's connections move
        # to the new master.
        answer, unavailable = _notify_retrying(
            server, api_key, {"channel": channel, "event": "after", "idempotency_key": channel}
        )
        # History written under the old master is never continued (it may lack acknowledged
        # writes): the channel starts a new epoch, and the subscriber is told so first.
        after = answer["channels"][channel]
        assert after["offset"] == 1 and after["epoch"] != event["epoch"], answer
        told = await client.recv(timeout=20)
        assert told == {**told, "type": "subscribed", "recovered": False, "epoch": after["epoch"]}, told
        (event,) = await client.events(1, timeout=20)
        assert (event["event"], event["offset"], event["epoch"]) == ("after", 1, after["epoch"])
        notify(server, api_key, {"channel": channel, "event": "later"})
        (event,) = await client.events(1, timeout=20)
        assert (event["event"], event["offset"]) == ("later", 2)
        assert f"notifier-{server.proc.pid}" in client_names(replica.port)
        print(f"failover took {failover_secs:.1f}s; the first publish after it got {unavailable} 503s")
        await client.close()
    finally:
        if server is not None:
            server.stop()
        if sentinel is not None:
            sentinel.stop()
        replica.stop()
        master.stop()


def _info(server: RedisServer, field: str) -> Any:
    with server.client() as client:
        return client.info("replication").get(field)


def _notify_retrying(server: Server, key: str, body: dict[str, Any], timeout: float = 20) -> tuple[dict[str, Any], int]:
    """POST /api/notify until it is accepted; the answer and the number of 503s before it."""
    deadline = time.monotonic() + timeout
    unavailable = 0
    while True:
        status, answer = post_json(f"{server.http}/api/notify", body, key)
        if status == 202 or time.monotonic() > deadline:
            assert status == 202, answer
            return dict(answer), unavailable
        assert status == 503, answer
        unavailable += 1
        time.sleep(0.2)
