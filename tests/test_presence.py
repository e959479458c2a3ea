"""Presence across two server processes, one of them killed; debounced join/leave frames."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from .support import RedisServer, Server, service_env
from .test_security import get_json
from .test_sse import open_stream
from .wsclient import Client

pytestmark = pytest.mark.integration

SECRET = "presence-suite-secret-long-enough-for-hs256"
ENV = {
    "NOTIFIER_JWT_SECRET": SECRET,
    "NOTIFIER_NAMESPACES": json.dumps({"room": {"presence": True, "presence_events": True}}),
    "NOTIFIER_PRESENCE_TTL_SECS": "3",
    "NOTIFIER_PRESENCE_LEAVE_DELAY_SECS": "1",
}


def url(server: Server, user: str) -> str:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    return f"{server.ws}?token={token}"


def presence(server: Server, key: str, channel: str) -> dict[str, Any]:
    status, body = get_json(f"{server.http}/api/channels/{channel}/presence", key)
    assert status == 200, body
    return body


async def test_presence_spans_processes_and_outlives_a_killed_one(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    env = service_env(redis_server.url, service_db, **ENV)
    first, second = Server(env, workdir), Server(env, workdir)
    channel = f"room:{uuid.uuid4().hex[:8]}"
    try:
        alice = await Client.connect(url(first, "alice"))
        bobs = [await Client.connect(url(second, "bob")) for _ in range(2)]
        anonymous = await Client.connect(second.ws)
        for client in [alice, *bobs, anonymous]:
            await client.subscribe(channel)
        seen = presence(first, api_key, channel)
        assert seen["users"] == [{"user": "alice", "connections": 1}, {"user": "bob", "connections": 2}]
        assert (seen["anonymous_connections"], seen["total_connections"]) == (1, 4)

        second.signal(signal.SIGKILL)  # no cleanup runs: its entries must expire by themselves
        deadline = time.monotonic() + 20
        while presence(first, api_key, channel)["total_connections"] != 1:
            assert time.monotonic() < deadline, presence(first, api_key, channel)
            await asyncio.sleep(0.5)
        assert presence(first, api_key, channel)["users"] == [{"user": "alice", "connections": 1}]
        await alice.close()
    finally:
        first.stop()
        second.stop()


async def test_join_and_leave_are_debounced_across_a_page_refresh(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    env = service_env(redis_server.url, service_db, **ENV)
    first, second = Server(env, workdir), Server(env, workdir)
    channel = f"room:{uuid.uuid4().hex[:8]}"
    try:
        watcher = await Client.connect(url(first, "watcher"))
        await watcher.subscribe(channel)
        assert await watcher.recv() == {"type": "join", "channel": channel, "user": "watcher"}

        carol = await Client.connect(url(second, "carol"))
        await carol.subscribe(channel)
        assert await watcher.recv() == {"type": "join", "channel": channel, "user": "carol"}
        # A page refresh: the socket closes and a new one subscribes at once, on the other process.
        await carol.close()
        carol = await Client.connect(url(first, "carol"))
        await carol.subscribe(channel)
        assert await watcher.nothing_within(2.5)  # neither a leave nor a second join
        await carol.close()
        assert await watcher.recv(timeout=10) == {"type": "leave", "channel": channel, "user": "carol"}
        assert presence(second, api_key, channel)["users"] == [{"user": "watcher", "connections": 1}]

        status, body = get_json(f"{first.http}/api/channels/news/presence", api_key)
        assert (status, body["code"]) == (404, "not_found")  # presence is off for that namespace
        await watcher.close()
    finally:
        first.stop()
        second.stop()


async def test_an_sse_stream_joins_and_leaves_presence_as_a_websocket_does(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    env = service_env(redis_server.url, service_db, **ENV)
    server = Server(env, workdir, kind="uvicorn")
    channel = f"room:{uuid.uuid4().hex[:8]}"
    token = jwt.encode({"sub": "dave", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    try:
        watcher = await Client.connect(url(server, "watcher"))
        await watcher.subscribe(channel)
        assert await watcher.recv() == {"type": "join", "channel": channel, "user": "watcher"}
        async with httpx.AsyncClient(timeout=30) as client:
            streams = open_stream(client, server, [channel], headers={"Authorization": f"Bearer {token}"})
            stream = await anext(streams)
            assert (await stream.next())["event"] == "subscribed"
            assert await watcher.recv() == {"type": "join", "channel": channel, "user": "dave"}
            seen = presence(server, api_key, channel)
            assert seen["users"] == [{"user": "dave", "connections": 1}, {"user": "watcher", "connections": 1}]
            await streams.aclose()
        assert await watcher.recv(timeout=10) == {"type": "leave", "channel": channel, "user": "dave"}
        assert presence(server, api_key, channel)["users"] == [{"user": "watcher", "connections": 1}]
        await watcher.close()
    finally:
        server.stop()
