"""Server-Sent Events through a real server, read the way curl -N would."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from .support import RedisServer, Server, notify, service_env

pytestmark = pytest.mark.integration

SECRET = "sse-suite-secret-long-enough-for-hs256-signing"


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, service_db: Path, workdir: Path) -> Iterator[Server]:
    env = service_env(redis_server.url, service_db, NOTIFIER_JWT_SECRET=SECRET, NOTIFIER_HEARTBEAT_SECS="1")
    proc = Server(env, workdir, kind="uvicorn")
    yield proc
    proc.stop()


def token(user: str, expires_in: int = 600) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + expires_in}, SECRET, algorithm="HS256")


class Stream:
    """An open SSE response and a parser for its messages."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        message: dict[str, Any] = {}
        while True:
            line = await asyncio.wait_for(anext(self.lines), timeout)
            if line == "":
                if message:
                    if "data" in message:
                        message["data"] = json.loads(message["data"])
                    return message
                continue
            if line.startswith(":"):
                self.comments.append(line)
                if not message:
                    return {"comment": line}
                continue
            field, _, value = line.partition(": ")
            message[field] = value

    async def events(self, count: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while len(found) < count:
            message = await self.next()
            if message.get("event") == "event":
                found.append(message)
        return found


async def open_stream(  # an async generator: anext() opens, aclose() closes
    client: httpx.AsyncClient, server: Server, channels: list[str], **kwargs: Any
) -> AsyncIterator[Stream]:
    query = "&".join(f"channel={c}" for c in channels)
    async with client.stream("GET", f"{server.http}/sse/?{query}", **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


async def test_events_arrive_and_last_event_id_resumes_exactly_once(server: Server, api_key: str) -> None:
    a, b = f"sse.{uuid.uuid4().hex[:8]}", f"sse.{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=30) as client:
        streams = open_stream(client, server, [a, b])
        stream = await anext(streams)
        subscribed = [await stream.next(), await stream.next()]
        assert [m["event"] for m in subscribed] == ["subscribed", "subscribed"]
        notify(server, api_key, {"channel": a, "event": "one"})
        notify(server, api_key, {"channel": b, "event": "two"})
        first, second = await stream.events(2)
        assert (first["data"]["event"], second["data"]["event"]) == ("one", "two")
        last_id = second["id"]
        assert json.loads(last_id).keys() == {a, b}
        await streams.aclose()

        for n in range(3):
            notify(server, api_key, {"channel": a if n % 2 else b, "event": f"missed-{n}"})
        streams = open_stream(client, server, [a, b], headers={"Last-Event-ID": last_id})
        stream = await anext(streams)
        announced, replayed = [], []
        while len(announced) < 2 or len(replayed) < 3:  # each channel: subscribed, then its replay
            message = await stream.next()
            (announced if message["event"] == "subscribed" else replayed).append(message)
        assert all(m["data"]["recovered"] for m in announced)
        assert sorted(m["data"]["event"] for m in replayed) == ["missed-0", "missed-1", "missed-2"]
        notify(server, api_key, {"channel": a, "event": "live"})
        (live,) = await stream.events(1)
        assert live["data"]["event"] == "live" and live["data"]["offset"] == 3
        while "comment" not in await stream.next(timeout=5):  # heartbeats are comments
            pass
        assert stream.comments[0] == ": ping"
        await streams.aclose()


async def test_sse_follows_the_websocket_authorization_rules(server: Server, api_key: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:

        async def status(query: str, **kwargs: Any) -> tuple[int, str]:
            async with client.stream("GET", f"{server.http}/sse/?{query}", **kwargs) as response:
                if response.status_code == 200:
                    return 200, ""
                return response.status_code, json.loads(await response.aread())["code"]

        assert await status("channel=private:x") == (403, "forbidden")
        assert await status(f"channel=user:42&token={token('43')}") == (403, "forbidden")
        assert await status("channel=user:42", headers={"Authorization": "Bearer not-a-token"}) == (
            401,
            "invalid_token",
        )
        assert await status(f"channel=user:42&token={token('42', expires_in=-60)}") == (401, "token_expired")
        assert await status("channel=nope:x") == (404, "unknown_channel")
        assert await status("channel=bad%20name") == (400, "bad_channel")
        assert await status("") == (400, "bad_channel")
        assert await status("channel=news&since=garbage") == (400, "bad_since")

        streams = open_stream(client, server, ["user:42"], headers={"Authorization": f"Bearer {token('42')}"})
        stream = await anext(streams)
        assert (await stream.next())["event"] == "subscribed"
        notify(server, api_key, {"user": "42", "event": "for-42"})
        (event,) = await stream.events(1)
        assert event["data"]["channel"] == "user:42"
        await streams.aclose()
