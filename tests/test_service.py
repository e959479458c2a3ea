"""End to end through real processes: Redis, two Daphne servers, WebSocket clients."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from .support import (
    RedisServer,
    Server,
    create_postgres_database,
    drop_postgres_database,
    manage,
    notify,
    post_json,
    service_env,
    wait_until,
)
from .wsclient import Client

pytestmark = pytest.mark.integration


def channel_name() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


async def check_post_reaches_every_subscriber_and_no_one_else(server: Server, api_key: str) -> None:
    news, other = channel_name(), channel_name()
    subscribers = [await Client.connect(server.ws) for _ in range(3)]
    outsider = await Client.connect(server.ws)
    for client in subscribers:
        await client.subscribe(news)
    await outsider.subscribe(other)

    answer = notify(server, api_key, {"channel": news, "event": "order.shipped", "data": {"order": 7}})
    assert answer["channels"][news]["offset"] == 1

    for client in subscribers:
        (event,) = await client.events(1)
        assert event["channel"] == news and event["offset"] == 1
        assert event["id"] == answer["id"] and event["event"] == "order.shipped" and event["data"] == {"order": 7}
    # The outsider's first event is its own channel's: it never saw the other one.
    batch = post_json(f"{server.http}/api/notify/batch", {"events": [{"channel": other, "event": "x"}]}, api_key)
    assert batch[0] == 202
    (event,) = await outsider.events(1)
    assert event["channel"] == other
    for client in [*subscribers, outsider]:
        await client.close()


async def test_post_reaches_every_subscriber_and_no_one_else(servers: tuple[Server, Server], api_key: str) -> None:
    await check_post_reaches_every_subscriber_and_no_one_else(servers[0], api_key)


async def test_the_readme_flow_on_the_embedded_server(service_db: str, workdir: Path, api_key: str) -> None:
    """`make run`'s server (no REDIS_URL): POST over HTTP reaches the socket through the in-process layer."""
    server = Server(service_env(None, service_db), workdir)
    try:
        await check_post_reaches_every_subscriber_and_no_one_else(server, api_key)
    finally:
        server.stop()


async def test_the_embedded_server_publishes_scheduled_events_itself(workdir: Path) -> None:
    """`make run` has no Celery beat: its server process dispatches what is due. On a database
    of its own: the session's Celery worker (tests/offline.py) dispatches the shared one's."""
    database = create_postgres_database(f"notifier_embedded_{os.getpid()}")
    env = service_env(None, database)
    manage(env, "migrate", "--verbosity", "0")
    api_key = manage(env, "create_api_key", "embedded").strip().splitlines()[-1]
    server = Server(env, workdir)
    try:
        channel = channel_name()
        client = await Client.connect(server.ws)
        await client.subscribe(channel)
        answer = notify(server, api_key, {"channel": channel, "event": "later", "delay": 1})
        assert answer["scheduled"] is True
        (event,) = await client.events(1, timeout=10)
        assert (event["id"], event["event"]) == (answer["id"], "later")
        await client.close()
    finally:
        server.stop()
        drop_postgres_database(database)


async def test_publish_through_either_process_reaches_subscribers_on_both(
    servers: tuple[Server, Server], api_key: str
) -> None:
    channel = channel_name()
    clients = [await Client.connect(server.ws) for server in servers for _ in range(2)]
    for client in clients:
        await client.subscribe(channel)
    notify(servers[0], api_key, {"channel": channel, "event": "one"})
    notify(servers[1], api_key, {"channels": [channel], "event": "two"})
    for client in clients:
        events = await client.events(2)
        assert [(e["offset"], e["event"]) for e in events] == [(1, "one"), (2, "two")]
        await client.close()


async def test_user_and_multi_channel_targets(servers: tuple[Server, Server], api_key: str) -> None:
    a, b = channel_name(), channel_name()
    client = await Client.connect(servers[1].ws)
    await client.subscribe(a)
    await client.subscribe(b)
    answer = notify(servers[0], api_key, {"channels": [a, b], "user": "42", "event": "fan"})
    assert set(answer["channels"]) == {a, b, "user:42"}
    events = await client.events(2)
    assert sorted(e["channel"] for e in events) == sorted([a, b])
    assert len({e["id"] for e in events}) == 1
    await client.close()


HTTP_BAD_INPUT = [
    # (raw body, status, code)
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid"),
    (b'{"channel": "news"}', 400, "invalid"),
    (b'{"event": "x"}', 400, "invalid"),
    (b'{"channel": 5, "event": "x"}', 400, "invalid"),
    (b'{"channel": "news", "event": 5}', 400, "invalid"),
    (b'{"channel": "bad name!", "event": "x"}', 400, "invalid"),
    (b'{"channel": "nope:x", "event": "x"}', 400, "invalid"),
    (b'{"channels": [], "event": "x"}', 400, "invalid"),
    (b'{"channels": "news", "event": "x"}', 400, "invalid"),
    (b'{"channel": "news", "event": "x", "surprise": 1}', 400, "invalid"),
    (b'{"user": "4 2", "event": "x"}', 400, "invalid"),
    (b'{"user": "42\\n", "event": "x"}', 400, "invalid"),
    (b'{"channel": "news\\n", "event": "x"}', 400, "invalid"),
    (b'{"channel": "news", "event": "x", "data": "' + b"a" * (70 * 1024) + b'"}', 413, "payload_too_large"),
]


async def test_bad_http_input_gets_documented_errors_and_others_keep_receiving(
    servers: tuple[Server, Server], api_key: str
) -> None:
    server = servers[0]
    channel = channel_name()
    watcher = await Client.connect(server.ws)
    await watcher.subscribe(channel)
    for raw, status, code in HTTP_BAD_INPUT:
        got_status, body = post_json(f"{server.http}/api/notify", None, api_key, raw=raw)
        assert (got_status, body["code"]) == (status, code), (raw[:60], body)
        assert set(body) == {"code", "message", "details"} and body["message"]
    assert await watcher.nothing_within(0.3)
    notify(server, api_key, {"channel": channel, "event": "still-here"})
    (event,) = await watcher.events(1)
    assert event["event"] == "still-here" and event["offset"] == 1
    await watcher.close()


async def test_api_keys_missing_unknown_and_revoked(
    servers: tuple[Server, Server], service_db: str, redis_server: RedisServer
) -> None:
    url = f"{servers[0].http}/api/notify"
    body = {"channel": "news", "event": "x"}
    status, answer = post_json(url, body)
    assert (status, answer["code"]) == (401, "missing_api_key")
    assert post_json(url, body, "nk_not-a-real-key") == (401, post_json(url, body, "nk_not-a-real-key")[1])
    assert post_json(url, body, "nk_not-a-real-key")[1]["code"] == "invalid_api_key"
    status, answer = post_json(url, None, raw=b"{}", key=None)
    assert status == 401

    # Revoked where the service's Redis is configured (admin, shell): refused at the next request
    # by every process, though each has the key cached.
    env = service_env(redis_server.url, service_db)
    key = manage(env, "create_api_key", "to-revoke").strip().splitlines()[-1]
    assert post_json(url, body, key)[0] == 202
    assert post_json(f"{servers[1].http}/api/notify", body, key)[0] == 202
    manage(env, "shell", "-c", REVOKE.format(name="to-revoke"))
    for server in servers:
        status, answer = post_json(f"{server.http}/api/notify", body, key)
        assert (status, answer["code"]) == (401, "invalid_api_key")


REVOKE = "from api.models import ApiKey; [k.revoke() for k in ApiKey.objects.filter(name={name!r})]"


async def test_a_key_revoked_without_redis_is_refused_within_the_cache_lifetime(
    servers: tuple[Server, Server], service_db: str
) -> None:
    from api.keys import KEY_CACHE_SECS

    url = f"{servers[0].http}/api/notify"
    body = {"channel": "news", "event": "x"}
    env = service_env(None, service_db)  # a script run without REDIS_URL cannot tell the processes
    key = manage(env, "create_api_key", "revoked-offline").strip().splitlines()[-1]
    assert post_json(url, body, key)[0] == 202
    manage(env, "shell", "-c", REVOKE.format(name="revoked-offline"))
    deadline = time.monotonic() + KEY_CACHE_SECS + 10  # generous: only stops a hang
    while post_json(url, body, key)[0] == 202:
        assert time.monotonic() < deadline, "a revoked key was still accepted long after the cache lifetime"
        await asyncio.sleep(0.2)
    assert post_json(url, body, key)[1]["code"] == "invalid_api_key"


WS_GARBAGE = [
    # (frame, expected error code)
    ("not json", "bad_frame"),
    (b"\x00\x01binary", "bad_frame"),
    ("[1,2,3]", "bad_frame"),
    ('"just a string"', "bad_frame"),
    ('{"op": "dance"}', "unknown_op"),
    ('{"no_op": true}', "unknown_op"),
    ('{"op": 7}', "unknown_op"),
    ('{"op": "subscribe"}', "bad_channel"),
    ('{"op": "subscribe", "channel": 12}', "bad_channel"),
    ('{"op": "subscribe", "channel": "has space"}', "bad_channel"),
    ('{"op": "subscribe", "channel": "nope:ns"}', "unknown_channel"),
    ('{"op": "subscribe", "channel": "private:x"}', "forbidden"),
    ('{"op": "subscribe", "channel": "user:42"}', "forbidden"),
    ('{"op": "subscribe", "channel": "news", "since": 5}', "bad_frame"),
    ('{"op": "subscribe", "channel": "news", "since": {"offset": -1}}', "bad_frame"),
    ('{"op": "unsubscribe", "channel": "never"}', "not_subscribed"),
    ('{"op": "publish", "channel": "news", "event": "x"}', "forbidden"),
    ('{"op": "ping", "ref": {"a": 1}}', "bad_frame"),
    ('{"op": "subscribe", "channel": "' + "x" * 70_000 + '"}', "frame_too_large"),
]


async def test_garbage_frames_get_error_frames_and_the_socket_stays_usable(
    servers: tuple[Server, Server], api_key: str
) -> None:
    server = servers[0]
    channel = channel_name()
    victim, bystander = await Client.connect(server.ws), await Client.connect(server.ws)
    await victim.subscribe(channel)
    await bystander.subscribe(channel)
    for frame, code in WS_GARBAGE:
        reply = await victim.request(frame)
        assert reply["type"] == "error" and reply["code"] == code, (frame[:60], reply)
    assert (await victim.request({"op": "ping", "ref": "r1"})) == {"type": "pong", "ref": "r1"}
    dup = await victim.request({"op": "subscribe", "channel": channel, "ref": 9})
    assert (dup["code"], dup["ref"]) == ("already_subscribed", 9)
    notify(server, api_key, {"channel": channel, "event": "after-garbage"})
    for client in (victim, bystander):
        (event,) = await client.events(1)
        assert event["event"] == "after-garbage"
        await client.close()


async def test_unsubscribe_stops_delivery(servers: tuple[Server, Server], api_key: str) -> None:
    channel = channel_name()
    client = await Client.connect(servers[0].ws)
    await client.subscribe(channel)
    reply = await client.request({"op": "unsubscribe", "channel": channel, "ref": 3})
    assert reply == {"type": "unsubscribed", "channel": channel, "ref": 3}
    notify(servers[1], api_key, {"channel": channel, "event": "x"})
    assert await client.nothing_within(0.5)
    await client.close()


async def test_origin_validation(servers: tuple[Server, Server]) -> None:
    server = servers[0]
    same_host = await Client.connect(server.ws, origin=f"http://127.0.0.1:{server.port}")
    await same_host.close()
    no_origin = await Client.connect(server.ws)
    await no_origin.close()
    import websockets

    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        await Client.connect(server.ws, origin="http://evil.example")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4501


async def test_redis_outage_answers_503_then_recovers(
    service_db: str, workdir: Path, api_key: str, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path)
    server = Server(service_env(redis_server.url, service_db), workdir)
    try:
        channel = channel_name()
        client = await Client.connect(server.ws)
        await client.subscribe(channel)
        notify(server, api_key, {"channel": channel, "event": "before"})
        assert (await client.events(1))[0]["event"] == "before"

        redis_server.stop()
        status, body = post_json(f"{server.http}/api/notify", {"channel": channel, "event": "during"}, api_key)
        assert (status, body["code"]) == (503, "unavailable"), body
        status, body = post_json(
            f"{server.http}/api/notify/batch", {"events": [{"channel": channel, "event": "during"}]}, api_key
        )
        assert (status, body["code"]) == (503, "unavailable"), body

        redis_server.start()
        accepted: list[dict] = []

        def publish_again() -> bool:
            status, body = post_json(f"{server.http}/api/notify", {"channel": channel, "event": "after"}, api_key)
            if status == 202:
                accepted.append(body)
            return status == 202

        await asyncio.to_thread(wait_until, publish_again, 30, 0.5, "the API to recover")
        # This Redis keeps nothing on disk: it came back empty, so the channel's history starts a
        # new epoch, and the subscriber is told so before the new epoch's events.
        restart = await client.recv(timeout=15)
        new_epoch = accepted[0]["channels"][channel]["epoch"]
        assert restart == {
            "type": "subscribed",
            "channel": channel,
            "offset": 0,
            "epoch": new_epoch,
            "recovered": False,
        }
        # Then it receives what was published after the outage, in order, up to the acknowledged
        # event (a refused attempt may have been stored, and is delivered).
        received = []
        while not received or received[-1]["id"] != accepted[0]["id"]:
            received.extend(await client.events(1, timeout=15))
        assert [e["event"] for e in received] == ["after"] * len(received)
        assert [e["offset"] for e in received] == list(range(1, len(received) + 1))
        await client.close()
    finally:
        server.stop()
        redis_server.stop()


def test_batch_answers_in_request_order(servers: tuple[Server, Server], api_key: str) -> None:
    channel = channel_name()
    body = {
        "events": [
            {"channel": channel, "event": "a"},
            {"channel": "bad name", "event": "b"},
            {"channel": channel, "event": "c", "data": "x" * (70 * 1024)},
            {"channel": channel, "event": "d"},
        ]
    }
    status, answer = post_json(f"{servers[0].http}/api/notify/batch", body, api_key)
    assert status == 202, answer
    first, bad, large, last = answer["results"]
    assert first["channels"][channel]["offset"] == 1 and last["channels"][channel]["offset"] == 2
    assert bad["error"]["code"] == "invalid" and large["error"]["code"] == "payload_too_large"
    too_many = {"events": [{"channel": channel, "event": "x"}] * 101}
    status, answer = post_json(f"{servers[0].http}/api/notify/batch", too_many, api_key)
    assert (status, answer["code"]) == (400, "invalid")


def test_history_pages_through_a_channel(servers: tuple[Server, Server], api_key: str) -> None:
    import json
    import urllib.request

    channel = channel_name()
    for n in range(5):
        notify(servers[n % 2], api_key, {"channel": channel, "event": f"e{n}"})
    request = urllib.request.Request(
        f"{servers[1].http}/api/channels/{channel}/history?since=1&limit=3",
        headers={"Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        page = json.loads(response.read())
    assert page["offset"] == 5 and page["complete"] is True
    assert [e["offset"] for e in page["events"]] == [2, 3, 4]
    assert [e["event"] for e in page["events"]] == ["e1", "e2", "e3"]


async def test_idempotency_key_over_http_delivers_once(servers: tuple[Server, Server], api_key: str) -> None:
    channel = channel_name()
    client = await Client.connect(servers[0].ws)
    await client.subscribe(channel)
    body = {"channel": channel, "event": "charge", "idempotency_key": "order-7-charged"}
    first = notify(servers[0], api_key, body)
    again = notify(servers[1], api_key, {**body, "data": "a different body is not compared"})
    assert again == first
    notify(servers[0], api_key, {"channel": channel, "event": "next"})
    events = await client.events(2)
    assert [(e["offset"], e["event"]) for e in events] == [(1, "charge"), (2, "next")]
    await client.close()
