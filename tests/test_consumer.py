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
from realtime.process import get_hub
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


async def test_foreign_origin_is_closed_with_4501(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["notifier.example"]
    for origin, host in [
        (b"http://evil.example", b"notifier.example"),
        # Same origin, on a name that is not ours (DNS rebinding: evil.example resolved to us).
        (b"http://evil.example:8000", b"evil.example:8000"),
    ]:
        communicator = WebsocketCommunicator(application, "/ws/", headers=[(b"origin", origin), (b"host", host)])
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


async def test_a_failing_frame_gets_an_internal_error_and_the_socket_stays_usable(
    ws: WebsocketCommunicator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from realtime.consumers import NotifierConsumer

    await recv(ws)  # hello

    async def broken(self: NotifierConsumer, frame: Any) -> None:
        raise KeyError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(NotifierConsumer, "handle", broken)
        await ws.send_to(text_data=json.dumps({"op": "ping"}))
        assert (await recv(ws))["code"] == "internal"
    await ws.send_to(text_data=json.dumps({"op": "subscribe", "channel": "after.bug"}))
    assert (await recv(ws))["type"] == "subscribed"


async def test_a_connection_that_fails_outside_a_frame_leaves_the_hub() -> None:
    """Not a ghost: closed with 1011 and removed from the hub, its subscriptions dropped."""
    communicator = WebsocketCommunicator(application, "/ws/")
    assert (await communicator.connect())[0]
    await recv(communicator)  # hello
    await communicator.send_to(text_data=json.dumps({"op": "subscribe", "channel": "ghost.check"}))
    assert (await recv(communicator))["type"] == "subscribed"
    hub = get_hub()
    assert len(hub.connections) == 1
    await communicator.send_input({"type": "websocket.unknown_message"})  # dispatch raises
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": CloseCode.INTERNAL_ERROR}
    await communicator.wait(timeout=5)
    assert len(hub.connections) == 0 and hub.subscriber_count("ghost.check") == 0
    await hub.stop()
