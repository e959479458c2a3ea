"""History that goes backwards: a Sentinel failover that lost acknowledged writes, a restore of an
older dump. Real processes throughout: Redis masters, replicas and three Sentinels, two Uvicorn
servers, WebSocket subscribers, a publisher over HTTP.

What must hold (issue 11): an (epoch, offset) pair never names two events; every acknowledged
event reaches every subscriber exactly once, and where history went backwards the subscribers
are told (`subscribed` with `recovered: false`); resuming clients get `recovered: false` or
exactly the events they missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import websockets

from .support import RedisServer, SentinelServer, Server, post_json, service_env, wait_until
from .test_operations import get_text
from .wsclient import Client

pytestmark = pytest.mark.integration

MASTER_NAME = "failover"
SUBSCRIBERS_PER_SERVER = 3


@dataclass
class Recorder:
    """A subscriber that records every frame it is sent (events and `subscribed`) as it comes."""

    client: Client
    channel: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, url: str, channel: str, since: dict[str, Any] | None = None) -> Recorder:
        client = await Client.connect(url)
        recorder = cls(client, channel)
        recorder.frames.append(await client.subscribe(channel, **({"since": since} if since else {})))
        recorder.task = asyncio.create_task(recorder._run())
        return recorder

    async def _run(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                try:
                    self.frames.append(await self.client.recv(timeout=60))
                except TimeoutError:
                    continue

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "event"]

    def ids(self) -> list[str]:
        return [e["id"] for e in self.events()]

    def told_not_recovered(self) -> bool:
        return any(f["type"] == "subscribed" and f["recovered"] is False for f in self.frames)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()


@dataclass
class Publisher:
    """Publishes to the servers in turn over HTTP; keeps what was acknowledged (202)."""

    servers: Sequence[Server]
    key: str
    channel: str
    acked: list[dict[str, Any]] = field(default_factory=list)  # {"id", "epoch", "offset", "name"}
    refused: list[dict[str, Any]] = field(default_factory=list)  # the error bodies of final refusals
    sent: int = 0

    async def publish(
        self, name: str, retry: Sequence[str] = ("unavailable",), timeout: float = 30, key: str | None = None
    ) -> int:
        """One event; a 503 whose code is in `retry` is retried with the same idempotency key, as
        a backend would (`unavailable`: Redis is moving). Returns the final status."""
        body = {"channel": self.channel, "event": name, "data": {"n": self.sent}}
        body["idempotency_key"] = key or uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            server = self.servers[self.sent % len(self.servers)]
            self.sent += 1
            # A generous bound, only to stop a hang: while a master fails over, a publish may wait
            # for the cluster client's retries before it is answered (seconds, seen here).
            status, answer = await asyncio.to_thread(post_json, f"{server.http}/api/notify", body, self.key, None, 30)
            if status == 202:
                position = answer["channels"][self.channel]
                self.acked.append({"id": answer["id"], "name": name, **position})
                return status
            assert status == 503, answer
            if answer["code"] not in retry or time.monotonic() > deadline:
                self.refused.append(answer)
                return status
            await asyncio.sleep(0.1)

    async def publish_many(self, prefix: str, count: int, **options: Any) -> list[int]:
        statuses = []
        for n in range(count):
            statuses.append(await self.publish(f"{prefix}-{n}", **options))
            await asyncio.sleep(0.0125)  # about 80 events/s, as the report's publisher
        return statuses

    def acked_ids(self, prefix: str = "") -> list[str]:
        return [a["id"] for a in self.acked if a["name"].startswith(prefix)]


def assert_positions_name_one_event(pairs: Iterator[tuple[str, int, str]]) -> None:
    """No (epoch, offset) pair is answered or delivered with two different event ids."""
    named: dict[tuple[str, int], str] = {}
    for epoch, offset, event_id in pairs:
        assert named.setdefault((epoch, offset), event_id) == event_id, f"({epoch}, {offset}) names two events"


def check_subscribers(recorders: Sequence[Recorder], publisher: Publisher) -> None:
    """Every acknowledged event reached every subscriber exactly once, nothing else came twice,
    and each subscriber was told that history went backwards."""
    acked = publisher.acked_ids()
    assert_positions_name_one_event(
        (event["epoch"], event["offset"], event["id"]) for r in recorders for event in r.events()
    )
    assert_positions_name_one_event((a["epoch"], a["offset"], a["id"]) for a in publisher.acked)
    for recorder in recorders:
        ids = recorder.ids()
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        missing = [i for i in acked if i not in set(ids)]
        assert not missing, f"{len(missing)} acknowledged events never arrived: {missing[:5]}"
        assert recorder.told_not_recovered(), "history went backwards and the subscriber was not told"


async def wait_for_events(recorders: Sequence[Recorder], ids: Sequence[str], timeout: float = 30) -> None:
    """Until every recorder has every id (or the timeout: the checks then say what is missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(set(ids) <= set(r.ids()) for r in recorders):
            return
        await asyncio.sleep(0.05)


async def check_resumes(servers: Sequence[Server], publisher: Publisher, sinces: Sequence[dict[str, Any]]) -> None:
    """A client resuming from each `since` gets `recovered: false`, or exactly the acknowledged
    events after it (in order) and nothing else."""
    by_position = {(a["epoch"], a["offset"]): a["id"] for a in publisher.acked}
    for server in servers:
        for since in sinces:
            recorder = await Recorder.start(server.ws, publisher.channel, since)
            await asyncio.sleep(0.5)
            await recorder.stop()
            subscribed = recorder.frames[0]
            if subscribed["recovered"] is False:
                continue
            expected = [
                by_position[(since["epoch"], offset)]
                for offset in range(since["offset"] + 1, subscribed["offset"] + 1)
                if (since["epoch"], offset) in by_position
            ]
            assert subscribed["epoch"] == since["epoch"], subscribed
            assert recorder.ids() == expected, f"resume from {since}: {subscribed}"


async def publish_during(
    publishers: Sequence[Publisher], disruption: Callable[[], None], before: int, after: int
) -> None:
    """`before` events on each publisher's channel, then events on all of them while
    `disruption` runs (in a thread: a master killed, a slot moved), then `after` more each. A
    publish refused with 503 `unavailable` is retried with its idempotency key, as a backend would."""
    await asyncio.gather(*(p.publish_many("before", before) for p in publishers))
    done = asyncio.Event()

    async def keep_publishing(publisher: Publisher) -> None:
        n = 0
        while not done.is_set():
            await publisher.publish(f"during-{n}")
            n += 1
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(keep_publishing(p)) for p in publishers]
    try:
        await asyncio.to_thread(disruption)
    finally:
        done.set()
        await asyncio.gather(*tasks)
    await asyncio.gather(*(p.publish_many("after", after) for p in publishers))


def check_once_or_told(recorders: Sequence[Recorder], publisher: Publisher) -> None:
    """No (epoch, offset) names two events; every subscriber got each acknowledged event once,
    or was told `recovered: false` (then it refetches); and every event acknowledged after the
    disruption reached every subscriber live."""
    assert_positions_name_one_event((a["epoch"], a["offset"], a["id"]) for a in publisher.acked)
    assert_positions_name_one_event(
        (event["epoch"], event["offset"], event["id"]) for r in recorders for event in r.events()
    )
    for recorder in recorders:
        ids = recorder.ids()
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        missing = [i for i in publisher.acked_ids() if i not in set(ids)]
        assert not missing or recorder.told_not_recovered(), f"{len(missing)} lost untold: {missing[:5]}"
        late = [i for i in publisher.acked_ids("after") if i not in set(ids)]
        assert not late, f"{len(late)} events published after the disruption never arrived"


def layer_outage_secs(log: str) -> float:
    """Seconds between the channel layer's reader losing Redis and reading again, from the log."""
    stamps = {}
    for line in log.splitlines():
        for what in ("channel layer lost Redis", "channel layer reconnected"):
            if what in line and what not in stamps:
                stamps[what] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    assert len(stamps) == 2, f"no reconnect of the channel layer in the log:\n{log[-3000:]}"
    return (stamps["channel layer reconnected"] - stamps["channel layer lost Redis"]).total_seconds()


def redis_info(server: RedisServer, name: str) -> Any:
    with server.client() as client:
        return client.info("replication").get(name)


def heal_replication(master: RedisServer, replica: RedisServer) -> None:
    replica.command("CONFIG", "SET", "masterauth", "")
    wait_until(
        lambda: redis_info(replica, "slave_repl_offset") == redis_info(master, "master_repl_offset"),
        what="the replica to catch up",
    )


def break_replication(master: RedisServer, replica: RedisServer) -> None:
    """Cut the replica off (a flaky link that stays down): it cannot authenticate to the master
    any more, so nothing written from now on reaches it."""
    replica.command("CONFIG", "SET", "masterauth", "not-the-password")
    master.command("CLIENT", "KILL", "TYPE", "replica")
    wait_until(lambda: redis_info(replica, "master_link_status") == "down", what="the replica's link to go down")


@dataclass
class SentinelSetup:
    master: RedisServer
    replica: RedisServer
    sentinels: list[SentinelServer]
    servers: list[Server]

    def promoted(self) -> bool:
        return all(s.master_address() == ("127.0.0.1", self.replica.port) for s in self.sentinels)


@pytest.fixture
def sentinel_setup(service_db: str, workdir: Path, request: pytest.FixtureRequest) -> Iterator[SentinelSetup]:
    """A master, one replica, three Sentinels (quorum 2) and two Uvicorn servers reaching Redis
    through them. `request.param`: extra environment for the servers."""
    extra: dict[str, str] = getattr(request, "param", {})
    master, replica = RedisServer(workdir), RedisServer(workdir)
    sentinels: list[SentinelServer] = []
    servers: list[Server] = []
    try:
        replica.command("REPLICAOF", "127.0.0.1", str(master.port))
        wait_until(lambda: redis_info(replica, "master_link_status") == "up", what="the replica's link")
        sentinels = [SentinelServer(workdir, master.port, MASTER_NAME, quorum=2) for _ in range(3)]
        wait_until(
            lambda: all(s.replica_ports() == [replica.port] and s.peer_count() == 2 for s in sentinels),
            what="the Sentinels to find the replica and each other",
        )
        env = service_env(
            f"redis://127.0.0.1:{master.port}/0",  # its db number only: the master comes from the Sentinels
            service_db,
            NOTIFIER_REDIS_SENTINELS=",".join(f"127.0.0.1:{s.port}" for s in sentinels),
            NOTIFIER_REDIS_SENTINEL_MASTER=MASTER_NAME,
            **extra,
        )
        servers = [Server(env, workdir, kind="uvicorn") for _ in range(2)]
        yield SentinelSetup(master, replica, sentinels, servers)
    finally:
        for server in servers:
            server.stop()
        for sentinel in sentinels:
            sentinel.stop()
        replica.stop()
        master.stop()


async def subscribe_everywhere(servers: Sequence[Server], channel: str) -> list[Recorder]:
    return [await Recorder.start(s.ws, channel) for s in servers for _ in range(SUBSCRIBERS_PER_SERVER)]


async def test_a_failover_that_lost_acknowledged_writes_moves_the_channel_to_a_new_epoch(
    sentinel_setup: SentinelSetup, api_key: str
) -> None:
    setup = sentinel_setup
    channel = f"failover.{uuid.uuid4().hex[:8]}"
    publisher = Publisher(setup.servers, api_key, channel)
    recorders = await subscribe_everywhere(setup.servers, channel)
    try:
        await publisher.publish_many("replicated", 20)
        wait_until(
            lambda: redis_info(setup.replica, "slave_repl_offset") == redis_info(setup.master, "master_repl_offset"),
            what="the replica to catch up",
        )
        break_replication(setup.master, setup.replica)
        await publisher.publish_many("lost", 25)  # acknowledged and delivered, but only on the master
        await wait_for_events(recorders, publisher.acked_ids())
        assert all(len(r.events()) == 45 for r in recorders), [len(r.events()) for r in recorders]
        lost = [a for a in publisher.acked if a["name"].startswith("lost")]

        setup.master.stop()  # SIGKILL: what it alone had is gone
        status, _ = await asyncio.to_thread(get_text, f"{setup.servers[0].http}/readyz")
        assert status == 503  # truthful while there is no master: an answer, not a hang
        wait_until(setup.promoted, timeout=30, what="the Sentinels to promote the replica")
        await publisher.publish_many("after", 25)
        await wait_for_events(recorders, publisher.acked_ids())

        check_subscribers(recorders, publisher)
        assert not publisher.refused, publisher.refused
        epoch = publisher.acked[0]["epoch"]
        assert publisher.acked[-1]["epoch"] != epoch, "the channel kept its epoch across lost writes"
        before, inside, after = 10, lost[10]["offset"], lost[-1]["offset"]
        await check_resumes(
            setup.servers, publisher, [{"offset": n, "epoch": epoch} for n in (before, inside, after, after + 30)]
        )
        newest = publisher.acked[-1]
        await check_resumes(setup.servers, publisher, [{"offset": newest["offset"] - 3, "epoch": newest["epoch"]}])

        for server in setup.servers:
            status, _ = await asyncio.to_thread(get_text, f"{server.http}/readyz")
            assert status == 200
            status, text = await asyncio.to_thread(get_text, f"{server.http}/metrics")
            assert status == 200
            assert "notifier_epoch_changes" in text, text
        logs = "".join(server.log() for server in setup.servers)
        assert "Redis master changed" in logs, logs[-3000:]
        for server in setup.servers:  # the layer's reader came back, once, and told its hub
            print(f"{server.name}: channel layer away for {layer_outage_secs(server.log()):.2f}s")
    finally:
        for recorder in recorders:
            await recorder.stop()


async def test_a_master_killed_during_publishing_loses_nothing_silently(
    sentinel_setup: SentinelSetup, api_key: str
) -> None:
    """The cluster's failover case (tests/test_cluster.py) under Sentinel: the master killed
    (SIGKILL) while three channels are published to from both processes."""
    setup = sentinel_setup
    channels = [f"killed.{uuid.uuid4().hex[:8]}" for _ in range(3)]
    publishers = [Publisher(setup.servers, api_key, channel) for channel in channels]
    recorders = {channel: await subscribe_everywhere(setup.servers, channel) for channel in channels}

    def kill_master() -> None:
        setup.master.stop()
        wait_until(setup.promoted, timeout=30, what="the Sentinels to promote the replica")

    try:
        await publish_during(publishers, kill_master, before=10, after=10)
        for publisher in publishers:
            await wait_for_events(recorders[publisher.channel], publisher.acked_ids("after"))
            check_once_or_told(recorders[publisher.channel], publisher)
            assert all(r.told_not_recovered() for r in recorders[publisher.channel])  # a new master: told
            newest = publisher.acked[-1]
            await check_resumes(setup.servers, publisher, [{"offset": newest["offset"] - 3, "epoch": newest["epoch"]}])
    finally:
        for channel_recorders in recorders.values():
            for recorder in channel_recorders:
                await recorder.stop()


@pytest.mark.parametrize(
    "sentinel_setup", [{"NOTIFIER_REPLICA_ACKS": "1", "NOTIFIER_REPLICA_ACK_TIMEOUT_MS": "300"}], indirect=True
)
async def test_with_replica_acks_nothing_acknowledged_is_lost_at_a_failover(
    sentinel_setup: SentinelSetup, api_key: str, workdir: Path
) -> None:
    setup = sentinel_setup
    channel = f"failover.{uuid.uuid4().hex[:8]}"
    publisher = Publisher(setup.servers, api_key, channel)
    recorders = await subscribe_everywhere(setup.servers, channel)
    spare: RedisServer | None = None
    try:
        assert set(await publisher.publish_many("replicated", 20)) == {202}
        break_replication(setup.master, setup.replica)
        status, body = await asyncio.to_thread(get_text, f"{setup.servers[0].http}/readyz")
        assert status == 200 and '"replicas": 0' in body.replace('":0', '": 0'), body  # told, not failing
        statuses = await publisher.publish_many("unreplicated", 10, retry=())
        assert set(statuses) == {503}, statuses  # no replica has them: not acknowledged
        assert {r["code"] for r in publisher.refused} == {"not_replicated"}, publisher.refused
        assert all(r["details"]["stored"] is True for r in publisher.refused), publisher.refused

        # Retried with its idempotency key once the replica caught up: the first answer, now
        # acknowledged, and no second copy.
        assert await publisher.publish("retried", retry=(), key="retried-key") == 503
        first = publisher.refused[-1]["details"]
        assert await publisher.publish("retried", retry=(), key="retried-key") == 503  # not yet replicated
        assert publisher.refused[-1]["code"] == "not_replicated"
        heal_replication(setup.master, setup.replica)
        assert await publisher.publish("retried", retry=(), key="retried-key") == 202
        assert publisher.acked[-1]["id"] == first["id"]
        assert publisher.acked[-1]["offset"] == first["channels"][channel]["offset"]
        break_replication(setup.master, setup.replica)
        assert set(await publisher.publish_many("unreplicated-again", 5, retry=())) == {503}

        setup.master.stop()
        wait_until(setup.promoted, timeout=30, what="the Sentinels to promote the replica")
        # The new master has no replica yet: publishes are refused until one joins.
        spare = RedisServer(workdir)
        spare.command("REPLICAOF", "127.0.0.1", str(setup.replica.port))
        wait_until(lambda: redis_info(spare, "master_link_status") == "up", what="a new replica")
        publisher.refused.clear()
        # The new replica may take a moment to acknowledge: a backend retries with its key.
        await publisher.publish_many("after", 20, retry=("unavailable", "not_replicated"))
        assert not publisher.refused, publisher.refused
        await wait_for_events(recorders, publisher.acked_ids())

        check_subscribers(recorders, publisher)
        for recorder in recorders:  # in order, too
            got = [i for i in recorder.ids() if i in set(publisher.acked_ids())]
            assert got == publisher.acked_ids()
        epoch = publisher.acked[0]["epoch"]
        await check_resumes(setup.servers, publisher, [{"offset": n, "epoch": epoch} for n in (5, 20, 25, 31, 35)])
    finally:
        for recorder in recorders:
            await recorder.stop()
        if spare is not None:
            spare.stop()


async def test_a_restore_of_an_older_dump_moves_the_channel_to_a_new_epoch(
    service_db: str, workdir: Path, api_key: str, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path)
    env = service_env(redis_server.url, service_db)
    servers = [Server(env, workdir, kind="uvicorn") for _ in range(2)]
    channel = f"restore.{uuid.uuid4().hex[:8]}"
    publisher = Publisher(servers, api_key, channel)
    recorders = await subscribe_everywhere(servers, channel)
    try:
        await publisher.publish_many("saved", 10)
        redis_server.command("SAVE")
        backup = tmp_path / "older.rdb"
        shutil.copy(redis_server.dump_path, backup)
        await publisher.publish_many("newer", 10)  # in no dump
        await wait_for_events(recorders, publisher.acked_ids())

        redis_server.stop()
        shutil.copy(backup, redis_server.dump_path)
        redis_server.start()  # the operator's restore: the same port, the older data
        # Subscribers are told without waiting for the next publish (the hubs' position check).
        deadline = time.monotonic() + 20
        while not all(r.told_not_recovered() for r in recorders) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert all(r.told_not_recovered() for r in recorders), "subscribers were not told of the restore"

        await publisher.publish_many("after", 10)
        await wait_for_events(recorders, publisher.acked_ids())
        check_subscribers(recorders, publisher)
        assert not publisher.refused, publisher.refused
        epoch = publisher.acked[0]["epoch"]
        await check_resumes(servers, publisher, [{"offset": n, "epoch": epoch} for n in (5, 10, 15, 20)])
    finally:
        for recorder in recorders:
            await recorder.stop()
        for server in servers:
            server.stop()
        redis_server.stop()
