"""The consumer through Channels' WebsocketCommunicator on the in-memory layer (no sockets)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator

from notifier.asgi import application
from realtime.codes import CloseCode
from realtime.hub import get_hub
from realtime.publish import apublish


@pytest.fixture(autouse=True)
def fresh_layer() -> None:
    # One in-memory layer per test: its queues belong to the test's event loop.
    channel_layers.backends.pop("default", None)


@pytest.fixture
async def ws() -> AsyncIterator[WebsocketCommunicator]:
    communicator = WebsocketCommunicator(application, "/ws/")
    connected, _ = await communicator.connect()
    assert connected
    yield communicator
    await communicator.disconnect()
    await get_hub().stop()


async def recv(ws: WebsocketCommunicator) -> dict[str, Any]:
    return json.loads(await ws.receive_from(timeout=5))


async def test_hello(ws: WebsocketCommunicator) -> None:
    hello = await recv(ws)
    assert hello["type"] == "hello" and hello["protocol"] == 1 and hello["user"] is None
    assert hello["heartbeat"] == 25 and hello["connection"]


async def test_subscribe_publish_receive(ws: WebsocketCommunicator) -> None:
    await recv(ws)
    await ws.send_json_to({"op": "subscribe", "channel": "unit.news", "ref": "s"})
    subscribed = await recv(ws)
    assert subscribed["type"] == "subscribed" and subscribed["ref"] == "s" and subscribed["recovered"] is True
    start = subscribed["offset"]
    result = await apublish(["unit.news"], "hello", {"x": 1})
    event = await recv(ws)
    assert event == {
        "type": "event",
        "channel": "unit.news",
        "offset": start + 1,
        "epoch": result.channels["unit.news"].epoch,
        "id": result.id,
        "event": "hello",
        "data": {"x": 1},
        "ts": event["ts"],
    }


async def test_resubscribe_with_since_replays_missed_events(ws: WebsocketCommunicator) -> None:
    await recv(ws)
    await ws.send_json_to({"op": "subscribe", "channel": "unit.replay"})
    start = await recv(ws)
    await ws.send_json_to({"op": "unsubscribe", "channel": "unit.replay"})
    assert (await recv(ws))["type"] == "unsubscribed"
    for n in range(3):
        await apublish(["unit.replay"], "missed", n)
    since = {"offset": start["offset"], "epoch": start["epoch"]}
    await ws.send_json_to({"op": "subscribe", "channel": "unit.replay", "since": since})
    subscribed = await recv(ws)
    assert subscribed["recovered"] is True and subscribed["offset"] == start["offset"] + 3
    replayed = [await recv(ws) for _ in range(3)]
    assert [e["data"] for e in replayed] == [0, 1, 2]


async def test_recovery_from_a_channel_that_had_no_history_yet(ws: WebsocketCommunicator) -> None:
    await recv(ws)
    await ws.send_json_to({"op": "subscribe", "channel": "unit.fresh"})
    subscribed = await recv(ws)
    assert (subscribed["offset"], subscribed["epoch"]) == (0, "")
    await apublish(["unit.fresh"], "first")
    event = await recv(ws)
    assert event["offset"] == 1 and event["epoch"]  # events carry the epoch the client must resume in
    await ws.send_json_to({"op": "unsubscribe", "channel": "unit.fresh"})
    await recv(ws)
    await apublish(["unit.fresh"], "missed")
    await ws.send_json_to({"op": "subscribe", "channel": "unit.fresh", "since": {"offset": 1, "epoch": event["epoch"]}})
    assert (await recv(ws))["recovered"] is True
    assert (await recv(ws))["event"] == "missed"


async def test_heartbeat_pings_without_any_subscription(settings: Any) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "HEARTBEAT_SECS": 1}
    communicator = WebsocketCommunicator(application, "/ws/")
    await communicator.connect()
    assert json.loads(await communicator.receive_from(timeout=5))["heartbeat"] == 1
    assert json.loads(await communicator.receive_from(timeout=5)) == {"type": "ping"}
    await communicator.disconnect()
    await get_hub().stop()


async def test_bad_frames_keep_the_socket_open(ws: WebsocketCommunicator) -> None:
    await recv(ws)
    await ws.send_to(text_data="{")
    assert (await recv(ws))["code"] == "bad_frame"
    await ws.send_to(bytes_data=b"\x01")
    assert (await recv(ws))["code"] == "bad_frame"
    await ws.send_json_to({"op": "ping", "ref": 1})
    assert await recv(ws) == {"type": "pong", "ref": 1}


async def test_a_flood_of_bad_frames_closes_with_4502(ws: WebsocketCommunicator) -> None:
    await recv(ws)
    for _ in range(25):
        await ws.send_to(text_data="nope")
    frames = []
    while True:
        message = await ws.receive_output(timeout=5)
        if message["type"] == "websocket.close":
            break
        frames.append(message)
    assert message["code"] == CloseCode.PROTOCOL_VIOLATION
    assert len(frames) == 21


async def test_foreign_origin_is_closed_with_4501() -> None:
    communicator = WebsocketCommunicator(
        application, "/ws/", headers=[(b"origin", b"http://evil.example"), (b"host", b"notifier.example")]
    )
    connected, _ = await communicator.connect()
    assert connected
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4501}
    good = WebsocketCommunicator(
        application, "/ws/", headers=[(b"origin", b"https://notifier.example"), (b"host", b"notifier.example")]
    )
    connected, _ = await good.connect()
    assert connected and json.loads(await good.receive_from(timeout=5))["type"] == "hello"
    await good.disconnect()
    await get_hub().stop()
