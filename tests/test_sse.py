"""Server-Sent Events through a real server, read the way curl -N would."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
import websockets
from channels.layers import channel_layers

from realtime import process
from realtime.process import get_hub
from realtime.sse import ServerSentEventsApp

from .support import RedisServer, Server, notify, service_env, wait_until

pytestmark = pytest.mark.integration

SECRET = "sse-suite-secret-long-enough-for-hs256-signing"
MAX_CONNECTIONS_PER_USER = 2


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[Server]:
    env = service_env(
        redis_server.url,
        service_db,
        NOTIFIER_JWT_SECRET=SECRET,
        NOTIFIER_HEARTBEAT_SECS="1",
        NOTIFIER_MAX_CONNECTIONS_PER_USER=str(MAX_CONNECTIONS_PER_USER),
        NOTIFIER_LOG_FORMAT="json",
    )
    proc = Server(env, workdir, kind="uvicorn")
    yield proc
    proc.stop()


def token(user: str, expires_in: int = 600) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + expires_in}, SECRET, algorithm="HS256")


def sub_token(user: str, channel: str, expires_in: int = 600, secret: str = SECRET) -> str:
    claims = {"sub": user, "channel": channel, "exp": int(time.time()) + expires_in}
    return jwt.encode(claims, secret, algorithm="HS256")


def unique(prefix: str = "sse.") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


class Stream:
    """An open SSE response and a parser for its messages."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        """The next message or comment; StopAsyncIteration when the server ended the response."""
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
    client: httpx.AsyncClient, server: Server, channels: list[str], query: str = "", **kwargs: Any
) -> AsyncIterator[Stream]:
    url = f"{server.http}/sse/?" + "&".join([*(f"channel={c}" for c in channels), *([query] if query else [])])
    async with client.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


async def status_of(client: httpx.AsyncClient, server: Server, query: str, **kwargs: Any) -> tuple[int, str]:
    """The status and error code of a GET /sse/ (a 200 stream is closed at once)."""
    async with client.stream("GET", f"{server.http}/sse/?{query}", **kwargs) as response:
        if response.status_code == 200:
            return 200, ""
        body = json.loads(await response.aread())
        assert set(body) == {"code", "message", "details"} and body["message"], body
        return response.status_code, body["code"]


def by_channel(messages: list[dict[str, Any]]) -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {}
    for m in messages:
        found.setdefault(m["data"]["channel"], []).append((m["data"]["offset"], m["data"]["event"]))
    return found


async def test_last_event_id_resumes_every_subscribed_channel_exactly_once(server: Server, api_key: str) -> None:
    a, b = unique(), unique()
    async with httpx.AsyncClient(timeout=30) as client:
        streams = open_stream(client, server, [a, b])
        stream = await anext(streams)
        subscribed = [await stream.next(), await stream.next()]
        assert [m["event"] for m in subscribed] == ["subscribed", "subscribed"]
        epoch_a = notify(server, api_key, {"channel": a, "event": "one"})["channels"][a]["epoch"]
        (first,) = await stream.events(1)  # only `a` has an event: `b` is known from its `subscribed`
        last_id = first["id"]
        assert json.loads(last_id) == {a: [1, epoch_a], b: [0, ""]}
        await streams.aclose()

        for channel, name in [(b, "b1"), (a, "a2"), (b, "b2"), (a, "a3")]:  # missed, on both channels
            notify(server, api_key, {"channel": channel, "event": name})
        streams = open_stream(client, server, [a, b], headers={"Last-Event-ID": last_id})
        stream = await anext(streams)
        announced: list[dict[str, Any]] = []
        received: list[dict[str, Any]] = []
        while len(announced) < 2 or len(received) < 4:  # each channel: subscribed, then its replay
            message = await stream.next()
            (announced if message["event"] == "subscribed" else received).append(message)
        assert all(m["data"]["recovered"] for m in announced)
        # A `subscribed` id must not skip the replay that follows it: it still says where the
        # client is, so a disconnect right after it loses nothing.
        for m in announced:
            assert json.loads(m["id"])[m["data"]["channel"]][0] == json.loads(last_id)[m["data"]["channel"]][0]
        notify(server, api_key, {"channel": a, "event": "live-a"})
        notify(server, api_key, {"channel": b, "event": "live-b"})
        while not {"live-a", "live-b"} <= {m["data"]["event"] for m in received}:
            received.extend(await stream.events(1))
        assert by_channel(received) == {  # each missed event once, in order, then the live ones
            a: [(2, "a2"), (3, "a3"), (4, "live-a")],
            b: [(1, "b1"), (2, "b2"), (3, "live-b")],
        }
        assert json.loads(received[-1]["id"]).keys() == {a, b}
        while "comment" not in await stream.next(timeout=5):  # heartbeats are comments
            pass
        assert stream.comments[0] == ": ping"
        await streams.aclose()


async def test_a_stream_that_ends_before_any_event_resumes_from_its_subscribed_id(server: Server, api_key: str) -> None:
    channel = unique()
    epoch = notify(server, api_key, {"channel": channel, "event": "before"})["channels"][channel]["epoch"]
    async with httpx.AsyncClient(timeout=30) as client:
        streams = open_stream(client, server, [channel])
        stream = await anext(streams)
        subscribed = await stream.next()
        assert subscribed["event"] == "subscribed" and subscribed["data"]["offset"] == 1
        assert json.loads(subscribed["id"]) == {channel: [1, epoch]}
        await streams.aclose()  # no event yet

        notify(server, api_key, {"channel": channel, "event": "missed-1"})
        notify(server, api_key, {"channel": channel, "event": "missed-2"})
        streams = open_stream(client, server, [channel], query=f"since={quote(subscribed['id'])}")
        stream = await anext(streams)
        assert (await stream.next())["data"]["recovered"] is True
        notify(server, api_key, {"channel": channel, "event": "live"})
        received = await stream.events(3)
        assert by_channel(received) == {channel: [(2, "missed-1"), (3, "missed-2"), (4, "live")]}
        await streams.aclose()


async def test_sse_follows_the_websocket_authorization_rules(server: Server, api_key: str) -> None:
    forged = jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, "a-different-secret-of-sufficient-length-x")
    async with httpx.AsyncClient(timeout=30) as client:

        async def status(query: str, **kwargs: Any) -> tuple[int, str]:
            return await status_of(client, server, query, **kwargs)

        assert await status("channel=private:x") == (403, "forbidden")
        assert await status(f"channel=user:42&token={token('43')}") == (403, "forbidden")
        assert await status("channel=user:42", headers={"Authorization": "Bearer not-a-token"}) == (
            401,
            "invalid_token",
        )
        assert await status(f"channel=user:42&token={forged}") == (401, "invalid_token")
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

    def refused_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return [r for r in lines if r["logger"] == "realtime.sse" and r["message"].startswith("token refused")]

    wait_until(refused_lines, timeout=10, what="the SSE token refusal in the log")
    assert all(len(r["connection"]) == 32 for r in refused_lines())  # the connection id, as /ws/ logs it
    assert forged not in server.log() and forged.split(".")[2] not in server.log()


async def test_subscription_tokens_grant_private_channels_each_by_its_own_claim(server: Server, api_key: str) -> None:
    p, q, user = unique("private:"), unique("private:"), unique("u")
    auth = f"token={token(user)}"
    async with httpx.AsyncClient(timeout=30) as client:

        async def status(query: str) -> tuple[int, str]:
            return await status_of(client, server, query)

        assert await status(f"channel={p}&{auth}") == (403, "forbidden")
        assert await status(f"channel={p}&{auth}&sub_token={sub_token('someone-else', p)}") == (403, "forbidden")
        assert await status(f"channel={p}&sub_token={sub_token(user, p)}") == (403, "forbidden")  # anonymous
        assert await status(f"channel={p}&{auth}&sub_token={sub_token(user, q)}") == (400, "bad_channel")
        twice = f"sub_token={sub_token(user, p)}&sub_token={sub_token(user, p, 300)}"
        assert await status(f"channel={p}&{auth}&{twice}") == (400, "bad_channel")
        assert await status(f"channel={p}&{auth}&sub_token={sub_token(user, p, -60)}") == (401, "token_expired")
        forged = sub_token(user, p, secret="a-different-secret-of-sufficient-length-x")
        assert await status(f"channel={p}&{auth}&sub_token={forged}") == (401, "invalid_token")
        assert await status(f"channel={p}&{auth}&sub_token={token(user)}") == (401, "invalid_token")
        # Two private channels and one public one; the tokens in another order than the channels.
        tokens = f"{auth}&sub_token={sub_token(user, q)}&sub_token={sub_token(user, p)}"
        assert await status(f"channel={p}&channel=news&channel={q}&{auth}&sub_token={sub_token(user, q)}") == (
            403,
            "forbidden",
        )

        streams = open_stream(client, server, [p, "news", q], query=tokens)
        stream = await anext(streams)
        announced = [await stream.next() for _ in range(3)]
        assert [m["data"]["channel"] for m in announced] == [p, "news", q]
        notify(server, api_key, {"channel": q, "event": "for-q"})
        notify(server, api_key, {"channel": p, "event": "for-p"})
        assert by_channel(await stream.events(2)) == {q: [(1, "for-q")], p: [(1, "for-p")]}
        await streams.aclose()


async def test_sse_streams_count_against_the_per_user_connection_limit(server: Server) -> None:
    user = unique("limit-")
    headers = {"Authorization": f"Bearer {token(user)}"}
    async with httpx.AsyncClient(timeout=30) as client:
        opened = [open_stream(client, server, ["news"], headers=headers) for _ in range(MAX_CONNECTIONS_PER_USER)]
        streams = [await anext(s) for s in opened]  # kept: a dropped line iterator closes its response
        for stream in streams:
            assert (await stream.next())["event"] == "subscribed"
        assert await status_of(client, server, "channel=news", headers=headers) == (429, "too_many_connections")
        assert await status_of(client, server, "channel=news") == (200, "")  # anonymous: not counted

        async with websockets.connect(f"{server.ws}?token={token(user)}") as ws:  # one limit for both transports
            refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert refused.get("code") == "too_many_connections", refused
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503

        await opened[0].aclose()  # a closed stream gives its place back
        deadline = time.monotonic() + 10
        while (answer := await status_of(client, server, "channel=news", headers=headers)) != (200, ""):
            assert answer == (429, "too_many_connections") and time.monotonic() < deadline, answer
            await asyncio.sleep(0.1)
        await opened[1].aclose()


async def test_sigterm_ends_open_streams_with_a_close_event_and_the_server_exits(
    redis_server: RedisServer, service_db: str, workdir: Path
) -> None:
    proc = Server(service_env(redis_server.url, service_db, NOTIFIER_JWT_SECRET=SECRET), workdir, kind="uvicorn")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            streams = open_stream(client, server=proc, channels=[unique()])
            stream = await anext(streams)
            assert (await stream.next())["event"] == "subscribed"
            proc.signal(signal.SIGTERM)
            close = await stream.next(timeout=15)
            assert (close["event"], close["data"]) == ("close", {"code": 4000})
            with pytest.raises(StopAsyncIteration):  # the response ended (an abrupt exit would raise an error)
                await stream.next(timeout=15)
            await streams.aclose()
        assert await asyncio.to_thread(proc.proc.wait, 20) is not None  # it exited by itself
    finally:
        proc.stop()


async def test_a_draining_server_refuses_new_streams() -> None:
    channel_layers.backends.pop("default", None)  # an in-memory layer of this test's loop
    hub = get_hub()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "GET", "query_string": b"channel=news", "headers": []}
    process.set_draining(True)
    try:
        await asyncio.wait_for(ServerSentEventsApp()(scope, receive, send), 10)
    finally:
        process.set_draining(False)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["code"] == "unavailable"
    assert hub.connections == set()
