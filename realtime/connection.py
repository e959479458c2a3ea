"""One WebSocket connection as the hub sees it: a bounded outbox drained by a short-lived writer.

Every frame for a socket (replies and events alike) goes through `deliver()`, so a socket's
frames keep their order, and the hub never waits on a slow socket. A socket whose outbox
overflows is closed with 4002 (too slow): the client reconnects and recovers from history
instead of growing this process's memory. Frames from history (a subscribe's replay, a gap
fill) arrive all at once, through no fault of the client: they are queued beyond the bound (up
to REPLAY_MAX_FRAMES / REPLAY_MAX_BYTES), and the bound applies to what else is pending, so a
replay of a whole history does not close the socket it is meant to recover.

Two ways to write, chosen per socket when it is created:

- Direct (Uvicorn's `websockets-sansio` protocol, no compression negotiated): the frame's
  WebSocket bytes are built once per event for all sockets (a server frame is unmasked, so the
  bytes are the same for everyone), queued, and written to the transport once per event-loop
  turn for each socket that has something pending: one `transport.write` for however many
  events arrived in that turn, and no task. When the transport pushes back (its buffer is over
  the high-water mark, Uvicorn clears `writable`), a writer task waits for it to drain while
  the outbox keeps filling up to its bound. Closing still goes through the ASGI `send`, after
  the queued frames, so Uvicorn's close handshake and timers are its own.
- Any other ASGI `send` (Daphne, Uvicorn's other WebSocket backends, compression, SSE, tests):
  a writer task exists only while frames are pending and awaits `send` for each.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from . import events, frames, metrics
from .codes import CloseCode
from .history import Position

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

OUTBOX_MAX_FRAMES = 1000
OUTBOX_MAX_BYTES = 8 * 1024 * 1024
# How much replayed history a socket may have queued beyond the bound (a default history of
# 1,000 events of the largest payload fits). A subscribe whose replay would not fit is answered
# `recovered: false` instead (hub.py).
REPLAY_MAX_FRAMES = 100_000
REPLAY_MAX_BYTES = 10 * OUTBOX_MAX_BYTES
WIRE_HEADER_MAX = 10  # bytes of an unmasked frame's header (wire_frame)
# The writer task sends from an index into the outbox and drops what it sent in steps of this
# many frames, rather than one `pop(0)` (which moves every pending frame) per frame.
SENT_COMPACT_FRAMES = 256

try:  # the direct path needs Uvicorn's sans-I/O protocol; without it every socket uses `send`
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as _SansIO
    from websockets.protocol import State as _WsState

    _OPEN: Any = _WsState.OPEN
except ImportError:  # pragma: no cover - uvicorn is a dependency
    _SansIO = None  # type: ignore[assignment,misc]
    _OPEN = None


def _direct_protocol(send: Send) -> Any:
    """Uvicorn's sans-I/O protocol behind `send`, when frames may be written to it directly."""
    if _SansIO is None:
        return None
    proto = getattr(send, "__self__", None)
    if type(proto) is not _SansIO or getattr(send, "__func__", None) is not _SansIO.send:
        return None
    if not proto.handshake_complete or proto.initial_response is not None or proto.conn.extensions:
        return None  # not accepted yet, refused, or compressed (permessage-deflate): use `send`
    return proto


_last_text: str | None = None
_last_wire: bytes = b""


def wire_frame(text: str) -> bytes:
    """The bytes of an unmasked, unfragmented WebSocket text frame (RFC 6455 §5.2).

    A fan-out hands the same `str` object to every socket, so the last one is remembered and
    encoded once per event, not once per socket.
    """
    global _last_text, _last_wire
    if text is _last_text:
        return _last_wire
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = b"\x81\x7e" + size.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + size.to_bytes(8, "big")
    _last_text, _last_wire = text, header + payload
    return _last_wire


class _Flusher:
    """Writes each direct socket's pending frames once per event-loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Connection] = []
        self.scheduled = False

    def add(self, conn: Connection) -> None:
        self.dirty.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn._flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = weakref.WeakKeyDictionary()


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class Connection:
    """A socket's outbox, liveness and subscriptions."""

    def __init__(self, send: Send, user: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.id = events.random_hex(16)
        self.user = user
        self.subscriptions: set[str] = set()
        self.presence_channels: set[str] = set()
        self.expires_at: float | None = None  # the token's expiry, Unix time
        self.auth_deadline: float | None = None  # when an unauthenticated socket is closed, monotonic
        self.clock = clock
        self.last_seen = clock()
        self.closed = False
        self._send = send
        # A list, not a deque: cleared, it frees its items' array, and an idle socket's outbox
        # is empty almost all the time (an emptied deque keeps a 600-byte block per socket).
        self._outbox: list[Any] = []
        self._outbox_bytes = 0
        self._sent = 0  # frames at the outbox's start already sent (the writer task's path)
        # Of what is pending, how much was replayed history: not counted against the bound.
        # Every frame sent takes one frame (and its bytes) off, so once the frames that were
        # pending when a replay arrived and the replay itself have been sent, it is back to 0.
        self._replay_frames = 0
        self._replay_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._close_code: int | None = None
        self._proto = _direct_protocol(send)
        self._flusher = _flusher() if self._proto is not None else None
        self._dirty = False

    @property
    def log_context(self) -> dict[str, str | None]:
        """Fields for structured logs: which connection, which user (never its token)."""
        return {"connection": self.id, "user": self.user}

    def touch(self) -> None:
        """Record that the client sent something (any frame proves it is alive)."""
        self.last_seen = self.clock()

    def deliver(
        self, frame: str, replay: bool = False, channel: str | None = None, offset: int = 0, epoch: str = ""
    ) -> None:
        """Queue a text frame; never blocks. Overflow closes the socket as too slow.

        `replay`: the frame comes from history (a replay or a gap fill) and does not count
        against the bound, within REPLAY_MAX_FRAMES / REPLAY_MAX_BYTES. `channel`, `offset`,
        `epoch`: where an event frame stands, for a transport that tracks it (`deliver_event`).
        """
        if self.closed:
            return
        outbox = self._outbox
        if self._proto is not None:
            wire = wire_frame(frame)
            outbox.append(wire)
            size = len(wire)
        else:
            outbox.append(frame)
            size = len(frame)
        self._outbox_bytes += size
        if replay:
            self._replay_frames = min(self._replay_frames + 1, REPLAY_MAX_FRAMES)
            self._replay_bytes = min(self._replay_bytes + size, REPLAY_MAX_BYTES)
        if (
            len(outbox) - self._sent - self._replay_frames > OUTBOX_MAX_FRAMES
            or self._outbox_bytes - self._replay_bytes > OUTBOX_MAX_BYTES
        ):
            if self._proto is not None and self._writer is None and self._proto.writable.is_set():
                # Not a slow client, a burst of live frames larger than the outbox within one
                # turn (a big batch): hand it to the transport now. A client that does not read makes the
                # transport push back, and then the outbox fills up again and overflows.
                self._write_now()
                return
            logger.info("connection %s too slow: %d frames pending", self.id, len(outbox))
            metrics.inc("notifier_slow_consumer_disconnects")
            self.close(CloseCode.TOO_SLOW)
            return
        if self._flusher is not None:
            if not self._dirty and self._writer is None:
                self._dirty = True
                self._flusher.add(self)
        else:
            self._ensure_writer()

    # What the hub and the client session hand a connection, by kind. A WebSocket writes each
    # as its frame; a transport with another framing (SSE) overrides them. An event goes
    # straight to `deliver`: the fan-out calls this once per socket and event.
    deliver_event = deliver

    def deliver_subscribed(self, channel: str, position: Position, recovered: bool, ref: Any = None) -> None:
        """Where a subscription starts (a subscribe's answer, or the hub's `recovered: false`)."""
        self.deliver(frames.subscribed(channel, position, recovered, ref))

    def deliver_presence(self, kind: str, frame: str) -> None:
        """A `join` or `leave` frame of a channel's presence."""
        self.deliver(frame)

    def ping(self) -> None:
        self.deliver(frames.PING)

    def can_replay(self, replayed: list[str]) -> bool:
        """Whether replaying these frames stays within what may be queued beyond the bound."""
        if self._replay_frames + len(replayed) > REPLAY_MAX_FRAMES:
            return False
        if self._proto is None:
            size = sum(map(len, replayed))
        else:  # the direct path counts wire bytes: UTF-8 plus the frame header
            size = sum(len(f) if f.isascii() else len(f.encode()) for f in replayed) + WIRE_HEADER_MAX * len(replayed)
        return self._replay_bytes + size <= REPLAY_MAX_BYTES

    def close(self, code: int) -> None:
        """Close after the frames already queued (unless closing for being too slow)."""
        if self.closed:
            return
        self.closed = True
        self._close_code = int(code)  # plain int: autobahn (Daphne) refuses IntEnum codes
        if code == CloseCode.TOO_SLOW:
            # Drop the backlog, and stop waiting on a send the client is not reading.
            self._clear()
            if self._writer is not None:
                self._writer.cancel()
                self._writer = None
        self._ensure_writer()

    def _clear(self) -> None:
        self._outbox.clear()
        self._outbox_bytes = self._sent = self._replay_frames = self._replay_bytes = 0

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    # -- the direct path -------------------------------------------------------------------

    def _writable(self) -> bool:
        """Whether bytes may still go to this socket; False once it is closing or gone."""
        proto = self._proto
        return not (
            proto.close_sent or proto.disconnected or proto.conn.state is not _OPEN or proto.transport.is_closing()
        )

    def _flush(self) -> None:
        """Write everything pending in one call (the flusher calls this once per loop turn)."""
        self._dirty = False
        self._write_now()

    def _write_now(self) -> None:
        outbox = self._outbox
        if self._writer is not None or not outbox:
            return
        if not self._writable():
            self.closed = True
            self._clear()
            return
        if not self._proto.writable.is_set():  # the transport pushes back: wait in a task
            self._ensure_writer()
            return
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        self._clear()
        self._proto.transport.write(data)

    async def _write_direct(self) -> None:
        proto = self._proto
        outbox = self._outbox
        while outbox:
            if not proto.writable.is_set():
                await proto.writable.wait()
            if not self._writable():
                self.closed = True
                self._clear()
                return
            data = b"".join(outbox)
            self._clear()
            proto.transport.write(data)

    # -- the writer task -------------------------------------------------------------------

    async def _write(self) -> None:
        try:
            outbox = self._outbox
            if self._proto is not None:
                await self._write_direct()
            else:
                while self._sent < len(outbox):
                    frame = outbox[self._sent]
                    self._sent += 1
                    size = len(frame)
                    self._outbox_bytes -= size
                    if self._replay_frames:
                        self._replay_frames -= 1
                    if self._replay_bytes:
                        self._replay_bytes = max(0, self._replay_bytes - size)
                    if self._sent >= SENT_COMPACT_FRAMES:
                        del outbox[: self._sent]
                        self._sent = 0
                    await self._send({"type": "websocket.send", "text": frame})
                self._clear()  # all sent
            if self._close_code is not None:
                await self._send({"type": "websocket.close", "code": self._close_code})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a socket closing mid-send is expected (DESIGN §8)
            logger.debug("connection %s: send failed: %s", self.id, exc)
            self.closed = True
            self._clear()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
                if len(self._outbox) > self._sent and not self.closed:
                    self._ensure_writer()

    def discard(self) -> None:
        """The socket is gone: drop pending frames and stop writing."""
        self.closed = True
        self._clear()
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
