"""The hub on the in-memory layer: in-order, gap-free, duplicate-free delivery per process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from realtime.channels import group_of
from realtime.codes import CloseCode
from realtime.connection import OUTBOX_MAX_FRAMES, Connection
from realtime.events import event_template
from realtime.history import Append, MemoryHistory, Position
from realtime.hub import Hub
from realtime.publish import hub_messages


class Socket:
    """A fake ASGI send that records what a socket would have been sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def events(self) -> list[dict[str, Any]]:
        frames = [json.loads(m["text"]) for m in self.sent if m["type"] == "websocket.send"]
        return [f for f in frames if f["type"] == "event"]

    def offsets(self) -> list[int]:
        return [e["offset"] for e in self.events()]


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub(InMemoryChannelLayer(capacity=10_000), MemoryHistory(), heartbeat_secs=25)
    yield hub
    await hub.stop()


async def store(hub: Hub, channel: str, count: int, per_message: int = 1) -> list[dict[str, Any]]:
    """Append events to history only, as if their live messages were lost; returns the hub
    messages publish() would have sent, `per_message` events each."""
    messages = []
    for n in range(0, count, per_message):
        items = [
            Append(channel, event_template(channel, f"i{n + i}", "e", "null", 0.0), 100, 60) for i in range(per_message)
        ]
        stored = await hub.history.append(items)
        messages.extend(message for _, message in hub_messages(items, stored))
    return messages


async def connect(hub: Hub, channel: str, since: Position | None = None) -> Socket:
    socket = Socket()
    conn = Connection(socket)
    await hub.add_connection(conn)
    await hub.subscribe(channel, conn, since)
    return socket


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def short_gap_wait(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr("realtime.hub.GAP_WAIT_SECS", 0.02)
    return 0.02


async def test_a_gap_that_does_not_close_is_filled_from_history(hub: Hub, short_gap_wait: float) -> None:
    socket = await connect(hub, "a")
    messages = await store(hub, "a", 3)
    await hub.on_event(messages[2])  # 1 and 2 never arrive live
    await hub.on_event(messages[2])  # a duplicate, also held
    await settle()
    assert socket.offsets() == []  # waiting for the earlier events
    await asyncio.sleep(short_gap_wait * 5)
    await hub.on_event(messages[1])  # late: dropped
    await settle()
    assert socket.offsets() == [1, 2, 3]
    assert hub.stats.gap_fills == 1 and hub.stats.duplicates_dropped == 2 and hub.stats.resyncs == 0


async def test_messages_that_race_are_put_back_in_order_without_history(hub: Hub) -> None:
    socket = await connect(hub, "h")
    first, second, third = await store(hub, "h", 9, per_message=3)
    assert [m["offset"] for m in (first, second, third)] == [1, 4, 7] and len(first["frames"]) == 3
    hub.history = MemoryHistory()  # so any history read would find nothing
    await hub.on_event(third)
    await hub.on_event({**second, "offset": 3, "frames": [first["frames"][-1], *second["frames"]]})  # 3 twice
    await settle()
    assert socket.offsets() == []
    await hub.on_event(first)
    await settle()
    assert socket.offsets() == list(range(1, 10))
    assert hub.stats.gap_fills == 0 and hub.stats.duplicates_dropped == 1


async def test_a_gap_history_no_longer_covers_is_announced_then_delivery_goes_on(
    hub: Hub, short_gap_wait: float
) -> None:
    socket = await connect(hub, "t")
    items = [Append("t", event_template("t", f"i{n}", "e", "null", 0.0), 2, 60) for n in range(5)]
    stored = await hub.history.append(items)  # history keeps the last 2 of 5
    (message,) = [m for _, m in hub_messages(items[4:], stored[4:])]
    await hub.on_event(message)  # 1-4 never arrive live; history still has 4 (and 5), not 1-3
    await asyncio.sleep(short_gap_wait * 5)
    frames = [json.loads(m["text"]) for m in socket.sent if m["type"] == "websocket.send"]
    assert [f["type"] for f in frames] == ["subscribed", "event", "event"]
    assert frames[0] == {
        "type": "subscribed",
        "channel": "t",
        "offset": 3,
        "epoch": message["epoch"],
        "recovered": False,
    }
    assert socket.offsets() == [4, 5]
    assert hub.stats.resyncs == 1


async def test_position_check_delivers_a_lost_last_event(hub: Hub) -> None:
    socket = await connect(hub, "b")
    await store(hub, "b", 2)
    await hub.check_positions()
    await settle()
    assert socket.offsets() == [1, 2]


async def test_subscribe_since_replays_then_goes_live(hub: Hub) -> None:
    first = await connect(hub, "c")
    messages = await store(hub, "c", 3)
    for message in messages:
        await hub.on_event(message)
    epoch = messages[0]["epoch"]
    late = await connect(hub, "c", since=Position(1, epoch))
    (more,) = await store(hub, "c", 1)
    await hub.on_event(more)
    await settle()
    assert first.offsets() == [1, 2, 3, 4]
    assert late.offsets() == [2, 3, 4]


async def test_unrecoverable_positions(hub: Hub) -> None:
    await store(hub, "d", 2)
    conn = Connection(Socket())
    sub = await hub.subscribe("d", conn, Position(1, "another-epoch"))
    assert sub.recovered is False and sub.replay == [] and sub.position.offset == 2
    hub.history = MemoryHistory()
    await hub.history.append([Append("e", event_template("e", "x", "e", "1", 0.0), 2, 60) for _ in range(5)])
    sub = await hub.subscribe("e", Connection(Socket()), Position(1, "whatever"))
    assert sub.recovered is False


async def test_group_joined_once_and_left_with_the_last_subscriber(hub: Hub) -> None:
    conns = [Connection(Socket()) for _ in range(3)]
    for conn in conns:
        await hub.subscribe("f", conn)
    layer: Any = hub.layer
    assert list(layer.groups[group_of("f")]) == [hub._layer_channel]
    for conn in conns[:2]:
        await hub.unsubscribe("f", conn)
    assert group_of("f") in layer.groups
    await hub.remove_connection(conns[2])
    assert group_of("f") not in layer.groups and hub.joined_channels() == []


async def test_every_event_exactly_once_while_others_join_and_leave(hub: Hub) -> None:
    from realtime.publish import apublish

    steady = [await connect(hub, "g") for _ in range(5)]
    churn: list[Connection] = []

    async def churner() -> None:
        for _ in range(40):
            conn = Connection(Socket())
            churn.append(conn)
            await hub.subscribe("g", conn)
            await asyncio.sleep(0)
            if len(churn) > 3:
                await hub.unsubscribe("g", churn.pop(0))

    async def publisher() -> None:
        for n in range(200):
            await apublish(["g"], "e", n)
            await asyncio.sleep(0)

    import realtime.publish as publish_module

    layer, history = hub.layer, hub.history
    original = publish_module.get_channel_layer, publish_module.get_history
    publish_module.get_channel_layer, publish_module.get_history = (lambda: layer), (lambda: history)  # type: ignore[assignment]
    try:
        await asyncio.gather(churner(), publisher())
        for _ in range(100):
            if all(len(s.events()) == 200 for s in steady):
                break
            await asyncio.sleep(0.01)
    finally:
        publish_module.get_channel_layer, publish_module.get_history = original  # type: ignore[assignment]
    for socket in steady:
        assert socket.offsets() == list(range(1, 201))
        assert [e["data"] for e in socket.events()] == list(range(200))


async def test_heartbeat_pings_and_closes_silent_sockets(hub: Hub) -> None:
    now = [0.0]
    quiet, lively = Socket(), Socket()
    conns = [Connection(quiet, clock=lambda: now[0]), Connection(lively, clock=lambda: now[0])]
    for conn in conns:
        await hub.add_connection(conn)
    now[0] = 30
    hub.heartbeat()
    conns[1].touch()
    now[0] = 55
    hub.heartbeat()
    await settle()
    assert quiet.sent[-1] == {"type": "websocket.close", "code": CloseCode.HEARTBEAT_MISSED}
    assert [m["text"] for m in lively.sent] == ['{"type":"ping"}', '{"type":"ping"}']


async def test_a_socket_that_stops_reading_is_closed_as_too_slow() -> None:
    sent: list[dict[str, Any]] = []
    release = asyncio.Event()  # never set: the client never reads

    async def stuck_send(message: dict[str, Any]) -> None:
        sent.append(message)
        await release.wait()

    conn = Connection(stuck_send)
    conn.deliver('{"n":"first"}')
    await settle()  # the writer is now stuck sending the first frame
    for n in range(OUTBOX_MAX_FRAMES + 5):
        conn.deliver(f'{{"n":{n}}}')
    assert conn.closed
    await settle()
    assert sent[-1] == {"type": "websocket.close", "code": CloseCode.TOO_SLOW}
    assert len(sent) == 2  # the frame in flight, then the close: the backlog was dropped


async def test_stopping_the_hub_cancels_a_pending_gap_wait(hub: Hub) -> None:
    await connect(hub, "s")
    messages = await store(hub, "s", 2)
    await hub.on_event(messages[1])  # waits GAP_WAIT_SECS for offset 1
    timer = hub._channels["s"].gap_timer
    assert timer is not None and not timer.done()
    await hub.stop()
    assert timer.cancelled()
