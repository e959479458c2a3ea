"""One WebSocket connection as the hub sees it: a bounded outbox drained by a short-lived writer.

Every frame for a socket (replies and events alike) goes through `deliver()`, so a socket's
frames keep their order, and the hub never waits on a slow socket. A writer task exists only
while frames are pending. A socket whose outbox overflows is closed with 4002 (too slow): the
client reconnects and recovers from history instead of growing this process's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .codes import CloseCode

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

OUTBOX_MAX_FRAMES = 1000
OUTBOX_MAX_BYTES = 8 * 1024 * 1024


class Connection:
    """A socket's outbox, liveness and subscriptions."""

    def __init__(self, send: Send, user: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.id = uuid.uuid4().hex
        self.user = user
        self.subscriptions: set[str] = set()
        self.presence_channels: set[str] = set()
        self.expires_at: float | None = None  # the token's expiry, Unix time
        self.auth_deadline: float | None = None  # when an unauthenticated socket is closed, monotonic
        self.clock = clock
        self.last_seen = clock()
        self.closed = False
        self._send = send
        self._outbox: deque[str] = deque()
        self._outbox_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._close_code: int | None = None

    def touch(self) -> None:
        """Record that the client sent something (any frame proves it is alive)."""
        self.last_seen = self.clock()

    def deliver(self, frame: str) -> None:
        """Queue a text frame; never blocks. Overflow closes the socket as too slow."""
        if self.closed:
            return
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        if len(self._outbox) > OUTBOX_MAX_FRAMES or self._outbox_bytes > OUTBOX_MAX_BYTES:
            logger.info("connection %s too slow: %d frames pending", self.id, len(self._outbox))
            self.close(CloseCode.TOO_SLOW)
            return
        self._ensure_writer()

    def close(self, code: int) -> None:
        """Close after the frames already queued (unless closing for being too slow)."""
        if self.closed:
            return
        self.closed = True
        self._close_code = int(code)  # plain int: autobahn (Daphne) refuses IntEnum codes
        if code == CloseCode.TOO_SLOW:
            # Drop the backlog, and stop waiting on a send the client is not reading.
            self._outbox.clear()
            self._outbox_bytes = 0
            if self._writer is not None:
                self._writer.cancel()
                self._writer = None
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while self._outbox:
                frame = self._outbox.popleft()
                self._outbox_bytes -= len(frame)
                await self._send({"type": "websocket.send", "text": frame})
            if self._close_code is not None:
                await self._send({"type": "websocket.close", "code": self._close_code})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a socket closing mid-send is expected (DESIGN §8)
            logger.debug("connection %s: send failed: %s", self.id, exc)
            self.closed = True
            self._outbox.clear()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
                if self._outbox and not self.closed:
                    self._ensure_writer()

    def discard(self) -> None:
        """The socket is gone: drop pending frames and stop writing."""
        self.closed = True
        self._outbox.clear()
        self._outbox_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
