"""The hub on the in-memory layer: in-order, gap-free, duplicate-free delivery per process."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from realtime.broker import event_messages
from realtime.channels import group_of
from realtime.codes import CloseCode
from realtime.connection import OUTBOX_MAX_FRAMES, Connection
from realtime.frames import event_template
from realtime.history import Append, MemoryHistory, Position, new_epoch
from realtime.hub import SLICES, Hub, slot_of


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
        messages.extend(message for _, message in event_messages(items, stored))
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
    (message,) = [m for _, m in event_messages(items[4:], stored[4:])]
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


async def test_a_channel_lingers_after_its_last_subscriber_and_a_return_gets_each_event_once() -> None:
    hub = Hub(InMemoryChannelLayer(capacity=10_000), MemoryHistory(), heartbeat_secs=25, linger_secs=0.3)
    layer: Any = hub.layer
    try:
        first = await connect(hub, "l")
        for message in await store(hub, "l", 2):
            await hub.on_event(message)
        await settle()
        (conn,) = hub.connections
        epoch = first.events()[0]["epoch"]
        await hub.remove_connection(conn)
        assert list(layer.groups[group_of("l")]) == [hub._layer_channel]  # still joined
        for message in await store(hub, "l", 4):  # 3-6 while no one is here: the hub follows them
            await hub.on_event(message)
        back = await connect(hub, "l", Position(2, epoch))
        await settle()
        assert back.offsets() == [3, 4, 5, 6]  # replayed from history, none twice
        (message,) = await store(hub, "l", 1)
        await hub.on_event(message)
        await settle()
        assert back.offsets() == [3, 4, 5, 6, 7]
        for conn in list(hub.connections):
            await hub.remove_connection(conn)
        hub.history = MemoryHistory()  # a return at the hub's position reads no history at all
        again = Connection(Socket())
        await hub.add_connection(again)
        sub = await hub.subscribe("l", again, Position(7, epoch))
        assert sub.position == Position(7, epoch) and sub.recovered and sub.replay == []
        for conn in list(hub.connections):
            await hub.remove_connection(conn)
        assert group_of("l") in layer.groups
        await asyncio.sleep(0.5)
        assert group_of("l") not in layer.groups and hub.joined_channels() == []
    finally:
        await hub.stop()


async def test_occupancy_follows_the_subscribers_through_a_linger() -> None:
    hub = Hub(InMemoryChannelLayer(capacity=10_000), MemoryHistory(), heartbeat_secs=25, linger_secs=60)
    calls: list[tuple[str, str]] = []

    class Recorder:
        def joined(self, channel: str) -> None:
            calls.append(("joined", channel))

        def left(self, channel: str) -> None:
            calls.append(("left", channel))

        def refresh(self, joined: Sequence[str]) -> None:
            pass

    try:
        conn = Connection(Socket())
        await hub.add_connection(conn)
        hub.occupancy = Recorder()  # type: ignore[assignment]
        await hub.subscribe("o", conn)
        await hub.unsubscribe("o", conn)
        assert calls == [("joined", "o"), ("left", "o")]  # vacated at once, though still joined
        await hub.subscribe("o", conn)  # back during the linger
        assert calls[-1] == ("joined", "o")
        await hub.unsubscribe("o", conn)
        state = hub._channels["o"]
        assert state.linger is not None
        state.linger.cancel()
        hub._linger_over("o", state)  # the linger ends, and before the group is left...
        await hub.subscribe("o", conn)  # ...someone subscribes
        await settle()
        assert calls[-1] == ("joined", "o") and hub.subscriber_count("o") == 1
        layer: Any = hub.layer
        assert list(layer.groups[group_of("o")]) == [hub._layer_channel]
    finally:
        await hub.stop()


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


async def test_the_heartbeat_loop_pings_each_socket_once_per_round_a_slice_at_a_time(hub: Hub) -> None:
    sockets = [Socket() for _ in range(60)]
    conns = [Connection(socket) for socket in sockets]
    for conn in conns:
        await hub.add_connection(conn)
    for slot in range(SLICES):
        hub.heartbeat(slot)
        pinged = [conn for conn, socket in zip(conns, sockets, strict=True) if socket.sent]
        assert {slot_of(conn.id) for conn in pinged} <= set(range(slot + 1))  # only the slices so far
    await settle()
    assert all([m["text"] for m in socket.sent] == ['{"type":"ping"}'] for socket in sockets)  # each once
    assert len({slot_of(conn.id) for conn in conns}) > 1  # the round is spread


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


def frames_of(socket: Socket) -> list[dict[str, Any]]:
    return [json.loads(m["text"]) for m in socket.sent if m["type"] == "websocket.send"]


async def test_a_subscriber_ahead_of_this_process_gets_nothing_twice(hub: Hub) -> None:
    # Failover to a slower process: the client has 1-4 (the process it came from was ahead);
    # this process has delivered only 1-2, and 3-5 are still on their way to it.
    existing = await connect(hub, "k")
    messages = await store(hub, "k", 5)
    for message in messages[:2]:
        await hub.on_event(message)
    epoch = messages[0]["epoch"]
    moved = Socket()
    conn = Connection(moved)
    await hub.add_connection(conn)
    answers: list[Any] = []
    sub = await hub.subscribe("k", conn, Position(4, epoch), answers.append)
    assert sub.recovered and sub.position == Position(5, epoch) and answers == [sub]
    for message in messages[2:]:  # the late live messages: already delivered, dropped
        await hub.on_event(message)
    (more,) = await store(hub, "k", 1)
    await hub.on_event(more)
    await settle()
    assert moved.offsets() == [5, 6]
    assert existing.offsets() == [1, 2, 3, 4, 5, 6]


async def test_a_position_ahead_of_history_in_the_same_epoch_is_not_recovered(hub: Hub) -> None:
    # E.g. a Redis failover that lost the last writes but kept the channel's epoch.
    messages = await store(hub, "l", 3)
    epoch = messages[0]["epoch"]
    socket = Socket()
    sub = await hub.subscribe("l", Connection(socket), Position(7, epoch))
    assert sub.recovered is False and sub.position == Position(3, epoch) and sub.replay == []


async def test_a_new_epoch_seen_live_is_announced_before_its_events(hub: Hub) -> None:
    socket = await connect(hub, "n")
    old = await store(hub, "n", 2)
    for message in old:
        await hub.on_event(message)
    hub.history = MemoryHistory()  # history lost: the next publish starts a new epoch
    new = await store(hub, "n", 2)
    new_epoch = new[0]["epoch"]
    for message in new:
        await hub.on_event(message)
    await hub.on_event(old[1])  # a late message of the old epoch does not switch back
    await settle()
    frames = frames_of(socket)
    assert [(f["type"], f.get("epoch"), f["offset"]) for f in frames] == [
        ("event", old[0]["epoch"], 1),
        ("event", old[0]["epoch"], 2),
        ("subscribed", new_epoch, 0),
        ("event", new_epoch, 1),
        ("event", new_epoch, 2),
    ]
    assert frames[2] == {"type": "subscribed", "channel": "n", "offset": 0, "epoch": new_epoch, "recovered": False}


async def test_a_new_epoch_found_by_the_position_check_is_announced_before_its_events(hub: Hub) -> None:
    socket = await connect(hub, "o")
    for message in await store(hub, "o", 3):
        await hub.on_event(message)
    hub.history = MemoryHistory()
    new_epoch = (await store(hub, "o", 2))[0]["epoch"]  # no live message reaches this process
    await hub.check_positions()
    await settle()
    frames = frames_of(socket)
    assert [(f["type"], f["offset"]) for f in frames[3:]] == [("subscribed", 0), ("event", 1), ("event", 2)]
    assert frames[3]["recovered"] is False and frames[4]["epoch"] == new_epoch


async def test_a_new_epoch_found_by_a_subscribe_is_announced_to_the_existing_subscribers(hub: Hub) -> None:
    first = await connect(hub, "q")
    old = await store(hub, "q", 2)
    for message in old:
        await hub.on_event(message)
    hub.history = MemoryHistory()
    new_epoch = (await store(hub, "q", 3))[0]["epoch"]
    second = Socket()
    sub = await hub.subscribe("q", Connection(second), Position(1, old[0]["epoch"]))
    assert sub.recovered is False and sub.position == Position(3, new_epoch) and sub.replay == []
    await settle()
    frames = frames_of(first)
    assert [(f["type"], f["offset"]) for f in frames[2:]] == [
        ("subscribed", 0),
        ("event", 1),
        ("event", 2),
        ("event", 3),
    ]
    assert frames[2]["recovered"] is False and frames[2]["epoch"] == new_epoch


async def store_many(hub: Hub, channel: str, count: int) -> list[dict[str, Any]]:
    """`count` events in history in one append (history keeps them all), as one run."""
    items = [Append(channel, event_template(channel, f"i{n}", "e", str(n), 0.0), 10_000, 60) for n in range(count)]
    return [message for _, message in event_messages(items, await hub.history.append(items))]


async def drain(socket: Socket, count: int) -> None:
    for _ in range(1000):
        if len(socket.events()) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(socket.events())} of {count} events")


async def test_a_replay_larger_than_the_outbox_is_not_too_slow(hub: Hub) -> None:
    total = OUTBOX_MAX_FRAMES + 500
    messages = await store_many(hub, "r", total)
    socket = await connect(hub, "r", since=Position(0, messages[0]["epoch"]))
    await drain(socket, total)
    assert socket.offsets() == list(range(1, total + 1))
    assert not any(m["type"] == "websocket.close" for m in socket.sent)


async def test_a_gap_fill_larger_than_the_outbox_is_not_too_slow(hub: Hub) -> None:
    socket = await connect(hub, "u")
    total = OUTBOX_MAX_FRAMES + 500
    await store_many(hub, "u", total)  # none of it arrives live
    await hub.check_positions()
    await drain(socket, total)
    assert socket.offsets() == list(range(1, total + 1))
    assert not any(m["type"] == "websocket.close" for m in socket.sent)


async def test_live_frames_behind_a_replay_still_close_a_socket_that_stops_reading(hub: Hub) -> None:
    messages = await store_many(hub, "v", OUTBOX_MAX_FRAMES + 500)
    release = asyncio.Event()  # never set: the client reads nothing

    async def stuck_send(message: dict[str, Any]) -> None:
        await release.wait()

    conn = Connection(stuck_send)
    await hub.subscribe("v", conn, Position(0, messages[0]["epoch"]))
    assert not conn.closed  # the replay is queued beyond the bound
    for _ in range(OUTBOX_MAX_FRAMES):
        live = await store_many(hub, "v", 1)
        await hub.on_event(live[0])
    assert not conn.closed  # 1,000 live frames behind the replay: at the bound
    await hub.on_event((await store_many(hub, "v", 1))[0])
    assert conn.closed and conn._close_code == CloseCode.TOO_SLOW


async def test_a_replay_larger_than_a_socket_may_queue_is_answered_not_recovered(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("realtime.connection.REPLAY_MAX_FRAMES", 100)
    messages = await store_many(hub, "w", 150)
    socket = Socket()
    conn = Connection(socket)
    sub = await hub.subscribe("w", conn, Position(0, messages[0]["epoch"]))
    assert sub.recovered is False and sub.position.offset == 150 and sub.replay == []
    assert not conn.closed


class RewindableHistory(MemoryHistory):
    """History in memory that can go backwards, as a promoted replica's does; `check` moves a
    channel behind the delivered offset to a new epoch, as RedisHistory's does."""

    def rewind(self, channel: str, offset: int) -> None:
        log = self._logs[channel]
        log.offset = offset
        log.frames = deque([f for f in log.frames if f[0] <= offset], maxlen=log.frames.maxlen)

    async def check(self, delivered: Sequence[tuple[str, Position]]) -> list[Position]:
        found = []
        for channel, position in delivered:
            log = self._live_log(channel)
            if log is not None and log.epoch == position.epoch and log.offset < position.offset:
                log.epoch, log.offset = new_epoch(), 0
                log.frames.clear()
            found.append(Position(log.offset, log.epoch) if log else Position(0, ""))
        return found


async def test_history_that_went_backwards_during_a_gap_fill_moves_to_a_new_epoch_and_loses_nothing_after(
    short_gap_wait: float,
) -> None:
    history = RewindableHistory()
    hub = Hub(InMemoryChannelLayer(capacity=10_000), history, heartbeat_secs=25)
    try:
        socket = await connect(hub, "r")
        for message in await store(hub, "r", 10):
            await hub.on_event(message)
        held = (await store(hub, "r", 2))[1]  # 11 never arrives live, 12 waits for it
        await hub.on_event(held)
        history.rewind("r", 5)  # a failover: the new master has only 1-5
        await asyncio.sleep(short_gap_wait * 5)
        after = await store(hub, "r", 3)  # published under the new epoch
        assert [m["offset"] for m in after] == [1, 2, 3] and after[0]["epoch"] != held["epoch"]
        for message in after:
            await hub.on_event(message)
        await settle()
        frames = [json.loads(m["text"]) for m in socket.sent if m["type"] == "websocket.send"]
        told = [f for f in frames if f["type"] == "subscribed" and f["recovered"] is False]
        assert told and told[-1]["epoch"] == after[0]["epoch"], frames
        new = [(f["epoch"], f["offset"]) for f in frames if f["type"] == "event" and f["epoch"] == after[0]["epoch"]]
        assert new == [(after[0]["epoch"], n) for n in (1, 2, 3)]  # none dropped as "already delivered"
    finally:
        await hub.stop()
