"""The hub: this process's single member of every channel group that has local subscribers.

It joins a channel's group once (not once per socket), receives each event frame that
`publish()` encoded once, and hands it to its local connections. It also delivers in order
and without gaps per channel: it remembers the last offset delivered; the next offset is
delivered, an old one dropped, and a gap is filled from history first. A periodic check of
each channel's latest offset catches a lost *last* event. Heartbeats run here too, one timer
for all sockets rather than one task per socket.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from channels.layers import BaseChannelLayer

from . import broker, metrics, rosters
from .channels import group_of
from .codes import CloseCode
from .conf import notifier_settings
from .connection import Connection
from .history import History, Position, Slice
from .online import Occupancy
from .presence import get_presence

logger = logging.getLogger(__name__)

RECEIVE_RETRY_SECS = 1.0
POSITION_CHECK_SECS = 5.0
# The periodic work (position checks, presence refreshes) is done a slice at a time, each
# channel or connection once per round: one round trip for thousands of personal channels held
# the event loop for hundreds of milliseconds, every delivery waiting behind it (issue 17).
SLICES = 20


def slot_of(name: str) -> int:
    """Which slice of the periodic work a channel or connection is in."""
    return zlib.crc32(name.encode()) % SLICES


HISTORY_READ_LIMIT = 10_000
# How long frames that arrived ahead of a gap wait for the earlier ones before history is read.
# Concurrent publishes get their offsets in one order and may reach the channel layer in
# another; the earlier message is then only a moment behind, and reading history for it would
# fail if this process is so far behind that history has moved past it.
GAP_WAIT_SECS = 0.25
# Epochs a channel's hub state has left, kept so that a late message of one cannot switch it back.
RETIRED_EPOCHS = 4


@dataclass
class HubStats:
    delivered: int = 0
    gap_fills: int = 0
    duplicates_dropped: int = 0
    position_fills: int = 0
    resyncs: int = 0  # gaps history no longer covered: subscribers were told to refetch
    _reported: dict[str, int] = field(default_factory=dict)

    def take_deltas(self) -> dict[str, int]:
        """Counts since the last call, named as metrics (realtime.metrics flushes them)."""
        current = {
            "notifier_frames_delivered": self.delivered,
            "notifier_gap_fills": self.gap_fills,
            "notifier_duplicates_dropped": self.duplicates_dropped,
            "notifier_position_fills": self.position_fills,
            "notifier_resyncs": self.resyncs,
        }
        deltas = {name: value - self._reported.get(name, 0) for name, value in current.items()}
        self._reported = current
        return {name: delta for name, delta in deltas.items() if delta}


@dataclass
class _Channel:
    channel: str
    subscribers: set[Connection] = field(default_factory=set)
    joined: asyncio.Future[None] | None = None
    pending: int = 0  # subscribes under way
    last: int | None = None  # last offset delivered to this process's subscribers
    epoch: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Runs of frames that arrived ahead of a gap, (first offset, frames), waiting for it to close.
    held: list[tuple[int, list[str]]] = field(default_factory=list)
    gap_timer: asyncio.Task[None] | None = None
    retired: list[str] = field(default_factory=list)  # earlier epochs, most recent last
    slot: int = field(init=False)  # its slice of the position checks
    occupied: bool = False  # counted as occupied by this process (channel.* webhooks)
    linger: asyncio.TimerHandle | None = None  # set while no one is subscribed: then the group is left

    def __post_init__(self) -> None:
        self.slot = slot_of(self.channel)

    def group_joined(self) -> bool:
        """Whether this process is in the channel's layer group (its join succeeded)."""
        joined = self.joined
        return joined is not None and joined.done() and not joined.cancelled() and joined.exception() is None


@dataclass(frozen=True)
class Subscription:
    """What a subscribe found: the position the socket starts from and what it replays."""

    position: Position
    replay: list[tuple[int, str]]  # (offset, frame), in the position's epoch
    recovered: bool


class Hub:
    """One per event loop (one per server process)."""

    def __init__(
        self, layer: BaseChannelLayer, history: History, heartbeat_secs: float, linger_secs: float = 0.0
    ) -> None:
        self.layer = layer
        self.history = history
        self.heartbeat_secs = heartbeat_secs
        # How long a channel stays joined after its last subscriber left: a client that comes
        # back meanwhile (a reload, a reconnect, a storm of them) costs no SUBSCRIBE and, at the
        # hub's position, no history read; leaving costs no UNSUBSCRIBE until then.
        self.linger_secs = linger_secs
        self._leaving: set[asyncio.Task[None]] = set()
        self.connections: set[Connection] = set()
        self.stats = HubStats()
        self._channels: dict[str, _Channel] = {}
        self._layer_channel: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = asyncio.Lock()
        self._position_task: asyncio.Task[None] | None = None
        self.occupancy: Occupancy | None = None

    # -- connections -------------------------------------------------------------------------

    async def add_connection(self, conn: Connection) -> None:
        """Track a socket for heartbeats; the first one starts the hub's loops."""
        await self._ensure_started()
        self.connections.add(conn)

    async def remove_connection(self, conn: Connection) -> None:
        self.connections.discard(conn)
        conn.discard()
        for channel in list(conn.subscriptions):
            await self.unsubscribe(channel, conn)

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        conn: Connection,
        since: Position | None = None,
        announce: Callable[[Subscription], None] = lambda sub: None,
    ) -> Subscription:
        """Join the channel's group if needed, then add `conn` with no gap and no duplicate.

        The group is joined before history is read, and the socket is added in the same step
        as the hub's position is compared with what history returned, so every offset after
        the socket's starting point is delivered exactly once, by replay or live. `announce` is
        called at that moment, before the replayed events and any live one reach the socket.
        """
        await self._ensure_started()
        state = self._channels.get(channel) or self._channels.setdefault(channel, _Channel(channel))
        conn.subscriptions.add(channel)
        state.pending += 1
        if state.linger is not None:  # someone is back before the channel was left
            state.linger.cancel()
            state.linger = None
        try:
            await self._join(channel, state)
            self._occupy(channel, state)  # a first join, or a return to a lingering channel
            # The lock keeps live deliveries of this channel out while the socket is attached.
            async with state.lock:
                result = await self._attach(channel, state, since)
                if conn.closed:  # the socket went away while we waited on Redis
                    conn.subscriptions.discard(channel)
                else:
                    if result.replay and not conn.can_replay([frame for _, frame in result.replay]):
                        # More than the socket may queue: sending it would only get the socket
                        # closed as too slow, and the client would come back for it again.
                        logger.info("%s: replay of %d events too large for %s", channel, len(result.replay), conn.id)
                        result = Subscription(result.position, [], False)
                    announce(result)
                    epoch = result.position.epoch
                    for offset, frame in result.replay:
                        conn.deliver_event(frame, True, channel, offset, epoch)
                    state.subscribers.add(conn)
            return result
        except BaseException:
            conn.subscriptions.discard(channel)
            raise
        finally:
            state.pending -= 1
            if conn not in state.subscribers:
                await self._leave_if_unused(channel, state)

    async def _attach(self, channel: str, state: _Channel, since: Position | None) -> Subscription:
        """Where a socket subscribing from `since` starts, and what it replays (under the lock).

        The socket is attached at the hub's position, since live delivery goes on from there.
        When this process's hub is behind the client (it came from a process that was ahead),
        the hub first catches up from history, delivering to its subscribers, so that the
        newcomer is attached at or after `since` and gets nothing twice.
        """
        if state.last is not None and state.epoch is not None:
            here = Position(state.last, state.epoch)
            if since is None or since == here:  # nothing to replay: no Redis round trip
                return Subscription(here, [], True)
        if since is None:
            current = await self.history.read(channel, after=_LATEST, limit=1)
            await self._align(channel, state, current.position)
            return Subscription(_position(state), [], True)
        read: Slice = await self.history.read(channel, after=since.offset, limit=HISTORY_READ_LIMIT)
        await self._align(channel, state, read.position)
        latest = read.position
        if (
            (latest.epoch and latest.epoch != state.epoch)  # history went backwards: moved to a new epoch
            or (since.offset > 0 and since.epoch != latest.epoch)
            or not read.complete
            or since.offset > latest.offset  # ahead of history (lost writes): nothing to go on from
        ):
            return Subscription(_position(state), [], False)
        assert state.last is not None
        while state.last < since.offset:  # this process is behind the client: catch up first
            before = state.last
            await self._catch_up(channel, state)
            self._release_held(state)
            if state.epoch != latest.epoch:  # history went backwards meanwhile: a new epoch
                return Subscription(_position(state), [], False)
            if state.last == before:
                raise ConnectionError(f"{channel}: history could not be read to catch up")
        replay: list[tuple[int, str]] = []
        after = since.offset
        while True:
            replay.extend((offset, frame) for offset, frame in read.frames if offset <= state.last)
            fetched = read.frames[-1][0] if read.frames else after
            if fetched >= state.last:
                return Subscription(_position(state), replay, True)
            after = fetched  # the hub has delivered past what we read: read the rest
            read = await self.history.read(channel, after=after, limit=HISTORY_READ_LIMIT)
            if read.position.epoch != state.epoch or not read.complete:  # history moved meanwhile
                return Subscription(_position(state), [], False)

    async def _align(self, channel: str, state: _Channel, position: Position) -> None:
        """Adopt history's position when the hub has none yet. When history restarted under a
        new epoch, the subscribers are told and get the new epoch's events. History behind what
        this hub delivered, in the same epoch, went backwards (Redis lost acknowledged writes):
        it is moved to a new epoch first (see realtime.history), never continued."""
        if state.last is None:
            state.last, state.epoch = position.offset, position.epoch
            return
        if position.epoch == state.epoch and position.offset < state.last:
            (position,) = await self.history.check([(channel, _position(state))])
        if state.epoch != position.epoch and position.epoch:  # "": no history now; the next publish starts one
            self._restart(channel, state, position.epoch)
            if state.subscribers:
                await self._catch_up(channel, state)
                self._release_held(state)
            else:
                state.last = position.offset

    async def unsubscribe(self, channel: str, conn: Connection) -> None:
        conn.subscriptions.discard(channel)
        state = self._channels.get(channel)
        if state is None:
            return
        state.subscribers.discard(conn)
        await self._leave_if_unused(channel, state)

    async def _join(self, channel: str, state: _Channel) -> None:
        if state.joined is not None:
            await asyncio.shield(state.joined)
            return
        joined = state.joined = asyncio.get_running_loop().create_future()
        try:
            assert self._layer_channel is not None
            await self.layer.group_add(group_of(channel), self._layer_channel)
        except BaseException as exc:
            state.joined = None
            if isinstance(exc, asyncio.CancelledError):
                joined.cancel()
            else:
                joined.set_exception(exc)
                joined.exception()  # retrieved: concurrent waiters re-raise it themselves
            raise
        joined.set_result(None)

    def _occupy(self, channel: str, state: _Channel) -> None:
        if self.occupancy is not None and not state.occupied:
            state.occupied = True
            self.occupancy.joined(channel)

    def _vacate(self, channel: str, state: _Channel) -> None:
        if self.occupancy is not None and state.occupied:
            state.occupied = False
            self.occupancy.left(channel)

    def _unused(self, channel: str, state: _Channel) -> bool:
        return not state.subscribers and not state.pending and self._channels.get(channel) is state

    async def _leave_if_unused(self, channel: str, state: _Channel) -> None:
        """Leave the channel's group once no one here is subscribed: after `linger_secs`, or at
        once when the join failed or there is no lingering."""
        if not self._unused(channel, state):
            return
        self._vacate(channel, state)  # occupancy follows the subscribers, not the lingering
        if self.linger_secs > 0 and state.group_joined():
            if state.linger is None:
                state.linger = asyncio.get_running_loop().call_later(
                    self.linger_secs, self._linger_over, channel, state
                )
            return
        await self._leave(channel, state)

    def _linger_over(self, channel: str, state: _Channel) -> None:
        state.linger = None
        if self._unused(channel, state):
            task = asyncio.get_running_loop().create_task(self._leave(channel, state))
            self._leaving.add(task)
            task.add_done_callback(self._leaving.discard)

    async def _leave(self, channel: str, state: _Channel) -> None:
        if not self._unused(channel, state):  # someone subscribed since the linger ended
            return
        del self._channels[channel]
        if state.group_joined():
            try:
                assert self._layer_channel is not None
                await self.layer.group_discard(group_of(channel), self._layer_channel)
            except Exception as exc:  # noqa: BLE001 - Redis down: nothing more to do here
                logger.warning("group_discard(%s) failed: %s", channel, exc)
                metrics.inc("notifier_redis_errors", operation="group_discard")

    def subscriber_count(self, channel: str) -> int:
        state = self._channels.get(channel)
        return len(state.subscribers) if state else 0

    def joined_channels(self) -> list[str]:
        return list(self._channels)

    # -- receiving and delivering ------------------------------------------------------------

    async def _ensure_started(self) -> None:
        if self._layer_channel is not None:
            return
        async with self._started:
            if self._layer_channel is None:
                name = await self.layer.new_channel(prefix="hub.")
                loop = asyncio.get_running_loop()
                self.occupancy = Occupancy(name)
                self._tasks = [
                    loop.create_task(self.occupancy.run()),
                    loop.create_task(self._receive_loop(name)),
                    loop.create_task(self._heartbeat_loop()),
                    loop.create_task(self._position_loop()),
                    loop.create_task(self._presence_loop()),
                ]
                self._layer_channel = name

    async def _receive_loop(self, name: str) -> None:
        while True:
            try:
                message = await self.layer.receive(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the hub alive across Redis outages
                logger.warning("hub receive failed: %s", exc)
                metrics.inc("notifier_redis_errors", operation="hub_receive")
                await asyncio.sleep(RECEIVE_RETRY_SECS)
                continue
            kind = message.get("type")
            if kind == broker.EVENT:
                await self.on_event(message)
            elif kind == broker.PRESENCE:
                self.on_presence(message)
            elif kind == broker.RESYNC:
                self._check_positions_soon()

    def _check_positions_soon(self) -> None:
        """The channel layer was away (a Redis failover): what was published meanwhile reached no
        hub live, so check every channel's position now rather than at the next round."""
        if self._position_task is None or self._position_task.done():
            self._position_task = asyncio.get_running_loop().create_task(self._check_positions_logged())

    async def _check_positions_logged(self, slot: int | None = None) -> None:
        try:
            await self.check_positions(slot)
        except Exception as exc:  # noqa: BLE001 - Redis away again: the position loop tries later
            logger.warning("position check failed: %s", exc)
            metrics.inc("notifier_redis_errors", operation="position_check")

    async def on_event(self, message: dict[str, Any]) -> None:
        """Deliver a channel's frames (consecutive offsets from `offset`) in order: frames past
        a gap wait for it to close (GAP_WAIT_SECS, then history fills it), and what was already
        delivered is dropped."""
        channel = message["channel"]
        state = self._channels.get(channel)
        if state is None:
            return
        first: int = message["offset"]
        # "frame": one frame, as processes of an earlier release send it during a rolling upgrade.
        frames: list[str] = message["frames"] if "frames" in message else [message["frame"]]
        epoch: str = message["epoch"]
        async with state.lock:
            if state.last is None:
                state.last, state.epoch = first - 1, epoch
            elif state.epoch != epoch:
                if epoch in state.retired:  # sent before history restarted, arriving late
                    self.stats.duplicates_dropped += len(frames)
                    return
                self._restart(channel, state, epoch)
            if first > state.last + 1:
                state.held.append((first, frames))
                if state.gap_timer is None or state.gap_timer.done():
                    state.gap_timer = asyncio.get_running_loop().create_task(self._close_gap(channel, state))
                return
            self._deliver_run(state, first, frames)
            self._release_held(state)

    def on_presence(self, message: dict[str, Any]) -> None:
        """Join/leave frames have no offset: hand them to local subscribers as they come."""
        state = self._channels.get(message["channel"])
        if state is not None:
            kind = broker.presence_kind(message)
            for conn in state.subscribers:
                conn.deliver_presence(kind, message["frame"])

    def _deliver_run(self, state: _Channel, first: int, frames: list[str], replay: bool = False) -> None:
        """Hand frames with offsets first, first + 1, ... (first <= last + 1) to every local
        subscriber, skipping those already delivered. `replay`: frames from history, which
        reach the sockets all at once and so do not count against their slow-consumer bound."""
        assert state.last is not None and first <= state.last + 1
        skipped = min(len(frames), state.last + 1 - first)
        self.stats.duplicates_dropped += skipped
        frames = frames[skipped:]
        if not frames:
            return
        channel, epoch, offset = state.channel, state.epoch or "", state.last
        state.last += len(frames)
        subscribers = state.subscribers
        for frame in frames:  # frame by frame: each is turned into WebSocket bytes once
            offset += 1
            for conn in subscribers:
                conn.deliver_event(frame, replay, channel, offset, epoch)
        self.stats.delivered += len(subscribers) * len(frames)

    def _release_held(self, state: _Channel) -> None:
        """Deliver the held runs that no longer follow a gap (a burst the sockets did not cause:
        it does not count against their slow-consumer bound either)."""
        held = state.held
        if held:
            held.sort(key=lambda run: run[0])
            assert state.last is not None
            while held and held[0][0] <= state.last + 1:
                first, frames = held.pop(0)
                self._deliver_run(state, first, frames, replay=True)
        if not held and state.gap_timer is not None:
            if state.gap_timer is not asyncio.current_task():
                state.gap_timer.cancel()
            state.gap_timer = None

    async def _close_gap(self, channel: str, state: _Channel) -> None:
        """The earlier frames did not come: read them from history, then deliver what was held."""
        await asyncio.sleep(GAP_WAIT_SECS)
        async with state.lock:
            try:
                while state.held and state.last is not None:
                    upto = min(first for first, _ in state.held) - 1
                    if upto > state.last:
                        self.stats.gap_fills += 1
                        epoch = state.epoch
                        await self._catch_up(channel, state, upto)
                        if state.epoch != epoch:  # history went backwards: a new epoch, subscribers told
                            break
                        if state.last < upto:  # history restarted meanwhile: the gap is gone for good
                            self._resync(channel, state, upto)
                    self._release_held(state)
            finally:
                if state.gap_timer is asyncio.current_task():
                    state.gap_timer = None

    async def _catch_up(self, channel: str, state: _Channel, upto: int | None = None) -> None:
        """Deliver history after the last delivered offset (up to `upto`). Where history no
        longer reaches back (or cannot be read), subscribers are told they missed events, with
        a `subscribed` frame saying `recovered: false`, and delivery goes on after the gap."""
        assert state.last is not None and state.epoch is not None
        limit = HISTORY_READ_LIMIT if upto is None else min(upto - state.last, HISTORY_READ_LIMIT)
        try:
            read = await self.history.read(channel, after=state.last, limit=limit)
        except Exception as exc:  # noqa: BLE001 - Redis down: the events cannot be had
            logger.warning("reading history of %s failed: %s", channel, exc)
            metrics.inc("notifier_redis_errors", operation="history_read")
            if upto is not None:
                self._resync(channel, state, upto)
            return
        if read.position.epoch != state.epoch:
            return  # history restarted: the next live event (or position check) realigns
        if read.position.offset < state.last:  # history went backwards
            await self._align(channel, state, read.position)
            return
        frames = [(offset, frame) for offset, frame in read.frames if upto is None or offset <= upto]
        start = frames[0][0] if frames else (upto or read.position.offset) + 1
        if start > state.last + 1:
            self._resync(channel, state, start - 1)
        for offset, frame in frames:
            self._deliver_run(state, offset, [frame], replay=True)

    def _resync(self, channel: str, state: _Channel, offset: int) -> None:
        """Skip to `offset`: the events up to it cannot be delivered, and the subscribers are
        told so (DESIGN §5: `recovered: false` means "refetch your state")."""
        assert state.last is not None
        logger.warning("%s: events %d-%d are no longer in history; subscribers told", channel, state.last + 1, offset)
        state.last = offset
        self._tell_not_recovered(channel, state)

    def _restart(self, channel: str, state: _Channel, epoch: str) -> None:
        """History restarted under a new epoch (it expired, or Redis lost it): offsets count
        from 1 again. The subscribers are told before any event of the new epoch reaches them,
        with a `subscribed` frame saying `recovered: false` at offset 0."""
        previous = state.epoch
        state.last, state.epoch = 0, epoch
        state.held.clear()
        if not previous:  # there was no history before (""): nothing was missed
            return
        state.retired = [*state.retired[1 - RETIRED_EPOCHS :], previous]
        if state.subscribers:
            logger.warning("%s: history restarted (epoch %s -> %s); subscribers told", channel, previous, epoch)
        self._tell_not_recovered(channel, state)

    def _tell_not_recovered(self, channel: str, state: _Channel) -> None:
        """Send the subscribers `subscribed` with `recovered: false` at the hub's position:
        events up to it cannot be delivered, delivery goes on after it."""
        if not state.subscribers:
            return
        self.stats.resyncs += 1
        position = _position(state)
        for conn in state.subscribers:
            conn.deliver_subscribed(channel, position, False)

    async def _position_loop(self) -> None:
        for tick in itertools.count():
            await asyncio.sleep(POSITION_CHECK_SECS / SLICES)
            await self._check_positions_logged(tick % SLICES)

    async def check_positions(self, slot: int | None = None) -> None:
        """Deliver events whose live message was lost and that no later event revealed.

        One round trip reads the latest position of every joined channel (of one slice, with
        `slot`: the loop checks each slice in turn, every channel once per POSITION_CHECK_SECS);
        only channels that are behind (or whose history restarted under a new epoch) read
        history. History that went backwards (written under another Redis master, or behind
        what was delivered here) is moved to a new epoch first, and the subscribers are told.
        """
        delivered = [
            (channel, _position(state))
            for channel, state in self._channels.items()
            if state.last is not None and (slot is None or state.slot == slot)
        ]
        if not delivered:
            return
        positions = await self.history.check(delivered)
        for (channel, _), position in zip(delivered, positions, strict=True):
            state = self._channels.get(channel)
            if state is None or state.last is None or not position.epoch or position.epoch in state.retired:
                continue
            if position.epoch == state.epoch and position.offset <= state.last:
                continue
            async with state.lock:
                if state.epoch != position.epoch:
                    self._restart(channel, state, position.epoch)
                before = state.last
                await self._catch_up(channel, state)
                self.stats.position_fills += state.last != before
                self._release_held(state)

    async def _heartbeat_loop(self) -> None:
        for tick in itertools.count():
            await asyncio.sleep(self.heartbeat_secs / SLICES)
            self.heartbeat(tick % SLICES)

    def heartbeat(self, slot: int | None = None) -> None:
        """Ping every socket (of one slice, with `slot`: the loop pings each socket once per
        interval, and so their pongs come spread out); close those silent for two intervals, or
        whose token ran out."""
        deadline = 2 * self.heartbeat_secs
        now = time.time()
        grace = notifier_settings.TOKEN_GRACE_SECS
        for conn in list(self.connections):
            if slot is not None and slot_of(conn.id) != slot:
                continue
            if conn.clock() - conn.last_seen > deadline:
                conn.close(CloseCode.HEARTBEAT_MISSED)
            elif conn.expires_at is not None and now > conn.expires_at + grace:
                conn.close(CloseCode.TOKEN_EXPIRED)
            elif conn.auth_deadline is not None and time.monotonic() > conn.auth_deadline:
                conn.close(CloseCode.FORBIDDEN)
            else:
                conn.ping()

    async def _presence_loop(self) -> None:
        """Keep this process's presence, per-user connection and per-channel entries from
        expiring: a slice at a time, each entry every PRESENCE_TTL_SECS / 3."""
        for tick in itertools.count():
            await asyncio.sleep(max(1.0, notifier_settings.PRESENCE_TTL_SECS / 3) / SLICES)
            slot = tick % SLICES
            if self.occupancy is not None:
                joined = [ch for ch, state in self._channels.items() if state.slot == slot and state.occupied]
                self.occupancy.refresh(joined)
            due = [c for c in self.connections if slot_of(c.id) == slot]
            entries = [(ch, c.user or "", c.id) for c in due for ch in c.presence_channels]
            users = [(c.user, c.id) for c in due if c.user is not None]
            try:
                await get_presence().refresh(entries)
                await rosters.user_connections().refresh(users)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: entries may lapse, then return
                logger.warning("presence refresh failed: %s", exc)
                metrics.inc("notifier_redis_errors", operation="presence_refresh")

    async def stop(self) -> None:
        for state in self._channels.values():
            if state.linger is not None:
                state.linger.cancel()
                state.linger = None
        timers = [state.gap_timer for state in self._channels.values() if state.gap_timer is not None]
        timers.extend(self._leaving)
        if self._position_task is not None:
            timers.append(self._position_task)
        for task in [*self._tasks, *timers]:
            task.cancel()
        await asyncio.gather(*self._tasks, *timers, return_exceptions=True)
        self._tasks = []


_LATEST = 1 << 62  # "after" this offset: read only the position, no frames


def _position(state: _Channel) -> Position:
    return Position(state.last or 0, state.epoch or "")
