"""The delivery guarantees on a real Redis Cluster (issue 16): six redis-server processes (three
masters, three replicas) that the test starts, three Uvicorn processes with
NOTIFIER_REDIS_CLUSTER, and a Celery worker on RabbitMQ (kombu cannot use a cluster).

What must hold, as on one Redis: every acknowledged event reaches every subscriber exactly once,
or the subscriber is told `recovered: false`; no (epoch, offset) names two events; resuming with
`since` gives exactly what was missed. Through layer drops on every node, a server process killed,
a master killed during publishing, and a slot moved during publishing.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .rediscluster import PASSWORD, TestCluster
from .support import Server, Worker, manage, post_json, service_env, wait_until
from .test_celery import send_tasks
from .test_failover import (
    Publisher,
    Recorder,
    check_once_or_told,
    check_resumes,
    publish_during,
    wait_for_events,
)
from .test_operations import get_text
from .test_security import get_json
from .wsclient import Client

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

PREFIX = "notifier"


@dataclass
class ClusterStack:
    cluster: TestCluster
    servers: list[Server]
    worker: Worker
    broker: str


@pytest.fixture
def stack(
    service_db: str, workdir: Path, rabbitmq_vhost: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ClusterStack]:
    """A fresh cluster (the tests kill masters and move slots), three servers, one worker.
    `request.param`: extra environment for the servers."""
    extra: dict[str, str] = getattr(request, "param", {})
    cluster = TestCluster(tmp_path)
    servers: list[Server] = []
    worker: Worker | None = None
    try:
        env = service_env(
            f"redis://:{PASSWORD}@nowhere.invalid:1/0",  # the password only: the nodes come from the seeds
            service_db,
            NOTIFIER_REDIS_CLUSTER=cluster.seeds,
            CELERY_BROKER_URL=rabbitmq_vhost,
            **extra,
        )
        servers = [Server(env, workdir, kind="uvicorn") for _ in range(3)]
        worker = Worker(env, workdir)
        yield ClusterStack(cluster, servers, worker, rabbitmq_vhost)
    finally:
        if worker is not None:
            worker.stop()
        for server in servers:
            server.stop()
        cluster.stop()


def history_key(channel: str) -> str:
    return f"{PREFIX}:h:{{ch.{channel}}}:meta"


def channels_on_every_master(cluster: TestCluster, count: int, prefix: str) -> list[str]:
    """`count` random channels, as many on each master (count // 3), taking turns: the
    first three are on three different masters."""
    masters = cluster.masters()
    by_master: dict[int, list[str]] = {port: [] for port in masters}
    while any(len(found) < count // len(masters) for found in by_master.values()):
        channel = f"{prefix}.{uuid.uuid4().hex[:8]}"
        found = by_master[cluster.owner(history_key(channel))]
        if len(found) < count // len(masters):
            found.append(channel)
    return [channel for turn in zip(*by_master.values(), strict=True) for channel in turn]


async def subscribe_all(servers: list[Server], channels: list[str]) -> dict[str, list[Recorder]]:
    """A subscriber per channel on every server, all at once (as clients come: concurrently)."""
    recorders = await asyncio.gather(*(Recorder.start(s.ws, c) for c in channels for s in servers))
    return {channel: list(recorders[i * len(servers) : (i + 1) * len(servers)]) for i, channel in enumerate(channels)}


@dataclass
class Traffic:
    """Channels on every master, a subscriber on each server for each, a publisher for each."""

    channels: list[str]
    recorders: dict[str, list[Recorder]]
    publishers: list[Publisher]
    owners: dict[str, int]  # each channel's master when the traffic started


async def start_traffic(stack: ClusterStack, api_key: str, count: int, prefix: str) -> Traffic:
    channels = channels_on_every_master(stack.cluster, count, prefix)
    recorders = await subscribe_all(stack.servers, channels)
    publishers = [Publisher(stack.servers, api_key, channel) for channel in channels]
    return Traffic(channels, recorders, publishers, {c: stack.cluster.owner(history_key(c)) for c in channels})


async def stop_all(recorders: dict[str, list[Recorder]]) -> None:
    for channel_recorders in recorders.values():
        for recorder in channel_recorders:
            await recorder.stop()


async def test_publishers_on_every_process_reach_subscribers_on_every_process_over_all_masters(
    stack: ClusterStack, api_key: str
) -> None:
    channels = channels_on_every_master(stack.cluster, 12, "spread")
    recorders = await subscribe_all(stack.servers, channels)
    publishers = [Publisher(stack.servers, api_key, channel) for channel in channels]
    try:
        # Every process publishes (each publisher goes round the servers), all channels at once.
        await asyncio.gather(*(p.publish_many("live", 15) for p in publishers))
        # And Celery, from a service that imports only Celery, through RabbitMQ.
        send_tasks(stack.broker, channels[0], 0, 20)
        for publisher in publishers:
            await wait_for_events(recorders[publisher.channel], publisher.acked_ids())
        for _ in range(600):  # until the worker has published the 20 tasks (or 30 s: the check says)
            if all(len(r.events()) == 35 for r in recorders[channels[0]]):
                break
            await asyncio.sleep(0.05)
        for publisher in publishers:
            assert not publisher.refused, publisher.refused
            assert [a["offset"] for a in publisher.acked[:1]] in ([1], [])
            channel_recorders = recorders[publisher.channel]
            for recorder in channel_recorders:
                ids = recorder.ids()
                assert len(ids) == len(set(ids)), "an event was delivered twice"
                assert set(publisher.acked_ids()) <= set(ids), "an acknowledged event never arrived"
                assert [e["offset"] for e in recorder.events()] == list(range(1, len(ids) + 1))
        tasks = [e for e in recorders[channels[0]][0].events() if e["event"] == "task"]
        assert sorted(e["data"]["n"] for e in tasks) == list(range(20))
        # Each master holds some of the history, and only the shard that owns a channel got its
        # messages: sharded pub/sub, not a broadcast to every node.
        per_master = stack.cluster.keys_per_master(f"{PREFIX}:h:*")
        assert len(per_master) == 3 and all(per_master.values()), per_master
        for port in stack.cluster.masters():
            shard_channels = stack.cluster.node(port).command("PUBSUB", "SHARDCHANNELS")
            owned = {f"{PREFIX}:g:{{ch.{c}}}" for c in channels if stack.cluster.owner(history_key(c)) == port}
            assert set(shard_channels) == owned, (port, shard_channels)  # type: ignore[arg-type]

        # Presence (hash-tagged by channel) counts the connections of every process.
        room = "chat:lobby"
        clients = [await Client.connect(s.ws) for s in stack.servers]
        for client in clients:
            await client.subscribe(room)
        status, presence = await asyncio.to_thread(
            get_json, f"{stack.servers[0].http}/api/channels/{room}/presence", api_key
        )
        assert status == 200 and presence["total_connections"] == 3, presence
        for client in clients:
            await client.close()

        # A user's connections (their roster and the online registry, in hash-tagged buckets):
        # a token from POST /api/tokens, the personal channel, an event to the user.
        status, minted = await asyncio.to_thread(
            post_json, f"{stack.servers[1].http}/api/tokens", {"user": "alice"}, api_key
        )
        assert status == 201, minted
        alice = await Client.connect(f"{stack.servers[2].ws}?token={minted['token']}")
        await alice.subscribe("user:alice")
        status, answer = await asyncio.to_thread(
            post_json, f"{stack.servers[0].http}/api/notify", {"user": "alice", "event": "hello"}, api_key
        )
        assert status == 202, answer
        (event,) = await alice.events(1)
        assert event["event"] == "hello"
        await alice.close()

        # Every event came live, through sharded pub/sub: the hubs' periodic position checks
        # (which would also deliver them, seconds late) found nothing missing.
        for server in stack.servers:
            status, text = await asyncio.to_thread(get_text, f"{server.http}/metrics")
            assert status == 200 and "notifier_events_published_total" in text, text
            fills = re.findall(r"^notifier_(?:position|gap)_fills_total (\S+)$", text, re.MULTILINE)
            assert all(float(n) == 0 for n in fills), fills

        # Resuming with `since` on another process gives exactly what was missed.
        for publisher in publishers[1:4]:  # (the first channel also has the tasks' events)
            middle = publisher.acked[7]
            await check_resumes(stack.servers, publisher, [{"offset": middle["offset"], "epoch": middle["epoch"]}])
    finally:
        await stop_all(recorders)


async def test_layer_drops_on_every_node_lose_nothing(stack: ClusterStack, api_key: str) -> None:
    channels = channels_on_every_master(stack.cluster, 9, "drops")
    recorders = await subscribe_all(stack.servers, channels)
    publishers = [Publisher(stack.servers, api_key, channel) for channel in channels]

    def drop_pubsub_connections() -> None:
        for _ in range(3):
            for node in stack.cluster.nodes:
                node.command("CLIENT", "KILL", "TYPE", "pubsub")
            asyncio.run(asyncio.sleep(0.3))

    try:
        await publish_during(publishers, drop_pubsub_connections, before=5, after=10)
        for publisher in publishers:
            await wait_for_events(recorders[publisher.channel], publisher.acked_ids())
            assert not publisher.refused, publisher.refused
            for recorder in recorders[publisher.channel]:
                assert not recorder.told_not_recovered()  # nothing went backwards: nothing to tell
            check_subscribers_once(recorders[publisher.channel], publisher)
        logs = "".join(server.log() for server in stack.servers)
        assert "channel layer lost Redis node" in logs, logs[-3000:]
    finally:
        await stop_all(recorders)


def check_subscribers_once(recorders: list[Recorder], publisher: Publisher) -> None:
    """Every acknowledged event reached every subscriber exactly once, in offset order."""
    acked = publisher.acked_ids()
    for recorder in recorders:
        assert recorder.ids() == acked, f"{len(set(acked) - set(recorder.ids()))} missing"


async def test_a_killed_server_process_costs_only_its_own_sockets(stack: ClusterStack, api_key: str) -> None:
    channel = channels_on_every_master(stack.cluster, 6, "kill9")[0]
    survivors, victim = stack.servers[:2], stack.servers[2]
    recorders = [await Recorder.start(s.ws, channel) for s in stack.servers]
    publisher = Publisher(survivors, api_key, channel)
    try:
        await publisher.publish_many("before", 10)
        await wait_for_events(recorders, publisher.acked_ids())
        seen = recorders[2].events()[-1]
        victim.signal(9)
        await publisher.publish_many("after", 10)
        await wait_for_events(recorders[:2], publisher.acked_ids())
        check_subscribers_once(recorders[:2], publisher)
        # The victim's client resumes on a survivor from what it saw: exactly the rest.
        client = await Client.connect(survivors[0].ws)
        subscribed = await client.subscribe(channel, since={"offset": seen["offset"], "epoch": seen["epoch"]})
        assert subscribed["recovered"] is True, subscribed
        rest = await client.events(len(publisher.acked) - seen["offset"], timeout=20)
        assert [e["id"] for e in rest] == publisher.acked_ids()[seen["offset"] :]
        await client.close()
    finally:
        for recorder in recorders:
            await recorder.stop()


async def test_a_master_killed_during_publishing_loses_nothing_silently(stack: ClusterStack, api_key: str) -> None:
    traffic = await start_traffic(stack, api_key, 9, "failover")
    recorders, publishers, before_kill = traffic.recorders, traffic.publishers, traffic.owners
    cluster, victim = stack.cluster, traffic.owners[traffic.channels[0]]
    try:
        await publish_during(publishers, lambda: cluster.kill_master(victim), before=10, after=10)
        for publisher in publishers:
            await wait_for_events(recorders[publisher.channel], publisher.acked_ids("after"))
        for publisher in publishers:
            check_once_or_told(recorders[publisher.channel], publisher)
        # The killed master's channels moved to a new epoch (the promoted replica may lack
        # acknowledged writes) and their subscribers were told; the other masters' were untouched.
        on_victim = [c for c in traffic.channels if before_kill[c] == victim]
        for publisher in publishers:
            if publisher.channel in on_victim:
                assert all(r.told_not_recovered() for r in recorders[publisher.channel])
            else:
                check_subscribers_once(recorders[publisher.channel], publisher)
        for publisher in publishers[:3]:
            newest = publisher.acked[-1]
            since = {"offset": newest["offset"] - 3, "epoch": newest["epoch"]}
            await check_resumes(stack.servers, publisher, [since])
    finally:
        await stop_all(recorders)


@pytest.mark.parametrize(
    "stack", [{"NOTIFIER_REPLICA_ACKS": "1", "NOTIFIER_REPLICA_ACK_TIMEOUT_MS": "1000"}], indirect=True
)
async def test_with_replica_acks_a_killed_master_loses_nothing_acknowledged(stack: ClusterStack, api_key: str) -> None:
    """Each master's writes are followed by WAIT on that master's connection: what was
    acknowledged is on its replica, so when the master dies every acknowledged event is still
    delivered, to every subscriber, once (and they are told of the new epoch)."""
    traffic = await start_traffic(stack, api_key, 6, "acked")
    channels, recorders, publishers = traffic.channels, traffic.recorders, traffic.publishers
    cluster, victim = stack.cluster, traffic.owners[channels[0]]
    try:
        # A batch over channels on all three masters: one WAIT per master in one round trip.
        batch = [{"channel": c, "event": "batch", "data": {}} for c in channels]
        status, answer = await asyncio.to_thread(
            post_json, f"{stack.servers[0].http}/api/notify/batch", {"events": batch}, api_key
        )
        assert status == 202 and all("error" not in r for r in answer["results"]), answer
        await publish_during(publishers, lambda: cluster.kill_master(victim), before=10, after=10)
        for publisher in publishers:
            retry = ("unavailable", "not_replicated")  # the promoted master has no replica yet
            assert not [r for r in publisher.refused if r["code"] not in retry], publisher.refused
            await wait_for_events(recorders[publisher.channel], publisher.acked_ids())
            for recorder in recorders[publisher.channel]:
                ids = recorder.ids()
                assert len(ids) == len(set(ids)), "an event was delivered twice"
                missing = [i for i in publisher.acked_ids() if i not in set(ids)]
                assert not missing, f"{len(missing)} acknowledged events never arrived"
            if traffic.owners[publisher.channel] == victim:
                assert all(r.told_not_recovered() for r in recorders[publisher.channel])
    finally:
        await stop_all(recorders)


async def test_a_slot_moved_during_publishing_is_followed(stack: ClusterStack, api_key: str) -> None:
    cluster = stack.cluster
    channels = channels_on_every_master(cluster, 6, "migrate")
    moving = channels[0]
    source = cluster.owner(history_key(moving))
    target = next(port for port in cluster.masters() if port != source)
    slot = int(cluster.node(source).command("CLUSTER", "KEYSLOT", history_key(moving)))  # type: ignore[call-overload]
    recorders = await subscribe_all(stack.servers, channels)
    publishers = [Publisher(stack.servers, api_key, channel) for channel in channels]
    try:
        await publish_during(publishers, lambda: cluster.migrate_slot(slot, source, target), before=10, after=10)
        assert cluster.owner(history_key(moving)) == target
        for publisher in publishers:
            await wait_for_events(recorders[publisher.channel], publisher.acked_ids("after"))
        for publisher in publishers:
            check_once_or_told(recorders[publisher.channel], publisher)
        # The subscriptions followed the slot: the moved channel's shard channel is on its new owner.
        wait_until(
            lambda: f"{PREFIX}:g:{{ch.{moving}}}" in cluster.node(target).command("PUBSUB", "SHARDCHANNELS"),  # type: ignore[operator]
            timeout=10,
            what="the subscription to follow its slot",
        )
        for publisher in publishers[1:]:  # the channels in other slots were untouched
            check_subscribers_once(recorders[publisher.channel], publisher)
    finally:
        await stop_all(recorders)


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        ({}, "CELERY_BROKER_URL must be set with NOTIFIER_REDIS_CLUSTER"),
        (
            {
                "CELERY_BROKER_URL": "amqp://x",
                "NOTIFIER_REDIS_SENTINELS": "127.0.0.1:1",
                "NOTIFIER_REDIS_SENTINEL_MASTER": "m",
            },
            "exclude each other",
        ),
        ({"CELERY_BROKER_URL": "amqp://x", "NOTIFIER_REDIS_CLUSTER": "127.0.0.1:notaport"}, "is not host:port"),
    ],
)
def test_cluster_mode_refuses_what_cannot_work(service_db: str, extra: dict[str, str], refusal: str) -> None:
    env = service_env("redis://127.0.0.1:1/0", service_db, **{"NOTIFIER_REDIS_CLUSTER": "127.0.0.1:7000", **extra})
    with pytest.raises(AssertionError, match=refusal):
        manage(env, "check")
