"""Nothing lost: recovery, concurrency, layer loss, node loss, lost history, slow consumers.

Every test runs real processes: a Redis the test starts, ASGI servers, WebSocket clients.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import websockets

from realtime.frames import event_template
from realtime.history import Append, RedisHistory

from .support import RedisServer, Server, notify, post_json, service_env
from .test_operations import get_text
from .wsclient import Client, follow

pytestmark = pytest.mark.integration


def channel_name() -> str:
    return f"rec.{uuid.uuid4().hex[:12]}"


def batch(server: Server, key: str, events: list[dict[str, Any]]) -> None:
    """POST a batch; when refused with 429 (the key's rate is 1,000 events/s by default), wait
    for the next window and send it again, as a client should."""
    for _ in range(10):
        status, answer = post_json(f"{server.http}/api/notify/batch", {"events": events}, key, timeout=60)
        if status != 429:
            break
        time.sleep(1.0)
    assert status == 202 and not any("error" in r for r in answer["results"]), answer


async def test_reconnect_with_since_gets_exactly_the_missed_events_then_live(
    servers: tuple[Server, Server], api_key: str
) -> None:
    channel = channel_name()
    client = await Client.connect(servers[0].ws)
    await client.subscribe(channel)
    notify(servers[0], api_key, {"channel": channel, "event": "seen"})
    (seen,) = await client.events(1)
    await client.close()

    batch(servers[1], api_key, [{"channel": channel, "event": "missed", "data": n} for n in range(50)])

    client = await Client.connect(servers[1].ws)
    subscribed = await client.subscribe(channel, since={"offset": seen["offset"], "epoch": seen["epoch"]})
    assert subscribed["recovered"] is True and subscribed["offset"] == 51
    replayed = await client.events(50)
    assert [e["offset"] for e in replayed] == list(range(2, 52))
    assert [e["data"] for e in replayed] == list(range(50))
    notify(servers[0], api_key, {"channel": channel, "event": "live"})
    (live,) = await client.events(1)
    assert (live["offset"], live["event"]) == (52, "live")
    assert await client.nothing_within(0.3)
    await client.close()


PUBLISHER = """
import json, sys, urllib.request
url, key, channel, name, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
for n in range(count):
    body = json.dumps({"channel": channel, "event": name, "data": n}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": "Bearer " + key})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202
"""


async def test_concurrent_publishers_get_unique_contiguous_offsets_seen_in_order(
    servers: tuple[Server, Server], api_key: str
) -> None:
    channel, per_publisher, publishers = channel_name(), 100, 4
    clients = [await Client.connect(server.ws) for server in servers for _ in range(2)]
    for client in clients:
        await client.subscribe(channel)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PUBLISHER,
            f"{servers[n % 2].http}/api/notify",
            api_key,
            channel,
            f"p{n}",
            str(per_publisher),
        )
        for n in range(publishers)
    ]
    total = per_publisher * publishers
    received = await asyncio.gather(*(client.events(total, timeout=60) for client in clients))
    assert [await proc.wait() for proc in procs] == [0] * publishers
    for events in received:
        assert [e["offset"] for e in events] == list(range(1, total + 1))
        for n in range(publishers):  # each publisher's own events keep their order
            assert [e["data"] for e in events if e["event"] == f"p{n}"] == list(range(per_publisher))
    assert len({e["id"] for e in received[0]}) == total
    for client in clients:
        await client.close()


@pytest.fixture
def history_in(redis_server: RedisServer, settings: Any) -> RedisHistory:
    """The servers' own history, written from the test process without any group_send."""
    settings.NOTIFIER = {**settings.NOTIFIER, "REDIS_URL": redis_server.url}
    return RedisHistory("notifier")


async def append_silently(history: RedisHistory, channel: str, name: str) -> None:
    await history.append([Append(channel, event_template(channel, uuid.uuid4().hex, name, "null", 0.0), 1000, 3600)])


async def test_events_whose_live_message_was_lost_are_still_delivered(
    servers: tuple[Server, Server], api_key: str, history_in: RedisHistory
) -> None:
    channel = channel_name()
    clients = [await Client.connect(server.ws) for server in servers]
    for client in clients:
        await client.subscribe(channel)
    # Offsets 1 and 2 reach history but never the channel layer; 3 is published normally.
    await append_silently(history_in, channel, "lost-1")
    await append_silently(history_in, channel, "lost-2")
    notify(servers[0], api_key, {"channel": channel, "event": "published-3"})
    for client in clients:  # the gap before 3 is filled from history, in order
        assert [e["event"] for e in await client.events(3)] == ["lost-1", "lost-2", "published-3"]
    # A lost *last* event: no later event reveals the gap; the periodic position check does.
    await append_silently(history_in, channel, "lost-last")
    for client in clients:
        (event,) = await client.events(1, timeout=15)
        assert (event["offset"], event["event"]) == (4, "lost-last")
        await client.close()


async def test_node_loss_clients_move_to_the_other_process_and_lose_nothing(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    env = service_env(redis_server.url, service_db)
    doomed, survivor = Server(env, workdir), Server(env, workdir)
    channel, total = channel_name(), 300
    received: dict[int, list[dict[str, Any]]] = {n: [] for n in range(6)}

    try:
        followers = [
            asyncio.create_task(follow(channel, (doomed if n < 3 else survivor).ws, survivor.ws, total, received[n]))
            for n in range(6)
        ]
        await asyncio.sleep(0.5)  # everyone subscribed

        async def publish() -> None:
            for start in range(0, total, 10):
                events = [{"channel": channel, "event": "tick", "data": n} for n in range(start, start + 10)]
                await asyncio.to_thread(batch, survivor, api_key, events)
                if start == 100:
                    doomed.signal(signal.SIGKILL)
                await asyncio.sleep(0.02)

        await publish()
        await asyncio.wait_for(asyncio.gather(*followers), 60)
    finally:
        doomed.stop()
        survivor.stop()
    for events in received.values():
        assert [e["offset"] for e in events] == list(range(1, total + 1))
        assert [e["data"] for e in events] == list(range(total))


async def test_lost_history_is_reported_as_not_recovered(
    service_db: str, workdir: Path, api_key: str, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path)
    server = Server(service_env(redis_server.url, service_db), workdir)
    try:
        channel = channel_name()
        client = await Client.connect(server.ws)
        await client.subscribe(channel)
        notify(server, api_key, {"channel": channel, "event": "before"})
        (before,) = await client.events(1)
        await client.close()

        redis_server.command("FLUSHALL")
        after = notify(server, api_key, {"channel": channel, "event": "after-flush"})
        assert after["channels"][channel]["epoch"] != before["epoch"]

        client = await Client.connect(server.ws)
        subscribed = await client.subscribe(channel, since={"offset": before["offset"], "epoch": before["epoch"]})
        assert subscribed["recovered"] is False
        assert (subscribed["offset"], subscribed["epoch"]) == (1, after["channels"][channel]["epoch"])
        assert await client.nothing_within(0.3)  # nothing is replayed across epochs
        await client.close()
    finally:
        server.stop()
        redis_server.stop()


async def test_a_client_that_stops_reading_is_closed_and_memory_stays_bounded(
    servers: tuple[Server, Server], redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    # The sockets live on a Uvicorn process (it has flow control; Daphne does not, see docs/operations.md);
    # events are published through another process, so this one's memory is only fan-out.
    server = Server(service_env(redis_server.url, service_db), workdir, kind="uvicorn")
    publisher = servers[0]
    channel, rounds, per_round, size = channel_name(), 15, 100, 60_000
    try:
        fast = await Client.connect(server.ws)
        await fast.subscribe(channel)
        # max_queue=1: once one frame is buffered the client stops reading from its socket.
        slow = await Client.connect(server.ws, max_queue=1)
        await slow.subscribe(channel)
        rss_before = server.rss_kib()

        async def drain_fast() -> list[dict[str, Any]]:
            return await fast.events(rounds * per_round, timeout=120)

        reader = asyncio.create_task(drain_fast())
        for r in range(rounds):
            events = [
                {"channel": channel, "event": "big", "data": {"n": r * per_round + n, "pad": "x" * size}}
                for n in range(per_round)
            ]
            await asyncio.to_thread(batch, publisher, api_key, events)
        received = await reader
        rss_after = server.rss_kib()

        assert [e["data"]["n"] for e in received] == list(range(rounds * per_round))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await slow.ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002
        deadline = time.monotonic() + 10  # and /metrics counts it (processes flush once a second)
        while "notifier_slow_consumer_disconnects_total 1.0" not in get_text(f"{server.http}/metrics")[1]:
            assert time.monotonic() < deadline, get_text(f"{server.http}/metrics")[1]
            await asyncio.sleep(0.3)
        published_kib = rounds * per_round * size // 1024
        growth = rss_after - rss_before
        print(f"slow consumer: published {published_kib} KiB; server RSS {rss_before} -> {rss_after} KiB")
        assert growth < published_kib // 3, f"RSS grew by {growth} KiB while {published_kib} KiB were published"
        assert "too slow" in server.log() or "4002" in json.dumps(closed.value.rcvd.code)
        await fast.close()
    finally:
        server.stop()


async def test_a_replay_larger_than_the_outbox_arrives_whole_on_daphne(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    # Daphne (the embedded default) writes through ASGI `send`, so a subscribe's replay sits in
    # the socket's outbox all at once: more than its 1,000-frame bound must not close it as
    # too slow (the client would come back with the same `since`, forever).
    env = service_env(redis_server.url, service_db, NOTIFIER_NAMESPACES=json.dumps({"deep": {"history_size": 2000}}))
    server = Server(env, workdir)
    channel, missed = f"deep:{uuid.uuid4().hex[:12]}", 1200
    try:
        client = await Client.connect(server.ws)
        await client.subscribe(channel)
        notify(server, api_key, {"channel": channel, "event": "seen"})
        (seen,) = await client.events(1)
        await client.close()
        for start in range(0, missed, 100):
            batch(
                server, api_key, [{"channel": channel, "event": "missed", "data": n} for n in range(start, start + 100)]
            )

        client = await Client.connect(server.ws)
        subscribed = await client.subscribe(channel, since={"offset": seen["offset"], "epoch": seen["epoch"]})
        assert subscribed["recovered"] is True and subscribed["offset"] == missed + 1
        replayed = await client.events(missed, timeout=30)
        assert [e["offset"] for e in replayed] == list(range(2, missed + 2))
        assert [e["data"] for e in replayed] == list(range(missed))
        notify(server, api_key, {"channel": channel, "event": "live"})
        (live,) = await client.events(1)
        assert live["offset"] == missed + 2
        assert await client.nothing_within(0.3)
        await client.close()
        assert "too slow" not in server.log()
    finally:
        server.stop()
