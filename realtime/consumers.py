"""The WebSocket transport: it parses frames, hands each to the connection's ClientSession
(realtime/client.py, the rules every transport shares), and answers refusals with error frames
and close codes. Frame-level limits (frames per second, the bad-frame budget) are the
protocol's, so they are here.

It is deliberately not a channel-layer member: the process's hub is, once, for all sockets
(DESIGN §8: a layer channel and receive loop per socket costs most of the gap to raw ASGI).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from redis.exceptions import RedisError

from . import frames, protocol
from .client import ClientSession, Refused
from .codes import CloseCode, ErrorCode
from .conf import notifier_settings
from .connection import Connection
from .limits import TokenBucket

logger = logging.getLogger(__name__)

# More refused frames than this within the window is abuse: close with 4502.
BAD_FRAME_BUDGET = 20
BAD_FRAME_WINDOW_SECS = 10.0
# How a refused connection (at connect, or its `auth` frame) is closed.
CLOSE_CODES: dict[str, CloseCode] = {
    ErrorCode.TOKEN_EXPIRED: CloseCode.TOKEN_EXPIRED,
    ErrorCode.INVALID_TOKEN: CloseCode.INVALID_TOKEN,
    ErrorCode.TOO_MANY_CONNECTIONS: CloseCode.TOO_MANY_CONNECTIONS,
    ErrorCode.UNAVAILABLE: CloseCode.SHUTDOWN,  # the session's only refusal with it: ShuttingDown
}


class NotifierConsumer(AsyncWebsocketConsumer):
    conn: Connection
    session: ClientSession

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # No per-socket channel-layer channel: the hub is this process's only layer member.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:  # one source of messages: no need for await_many_dispatch's task per socket
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        except Exception:
            # A bug must not leave this socket in the hub and in presence for good.
            logger.exception("connection failed", extra=self.log_context if hasattr(self, "conn") else {})
            await self.disconnect(CloseCode.INTERNAL_ERROR)
            with contextlib.suppress(Exception):  # the socket may be gone already
                await self.base_send({"type": "websocket.close", "code": int(CloseCode.INTERNAL_ERROR)})

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' dispatch closes old DB connections in a thread on every frame; the socket
        # path touches the database only through database_sync_to_async, so skip that.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # -- life cycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.accept()
        self.conn = Connection(self.base_send)
        self.session = ClientSession(self.conn, "websocket", logger)
        self._bad_frames: list[float] = []
        self._frames = TokenBucket(notifier_settings.CLIENT_FRAMES_PER_SEC)
        token = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
        try:
            self.session.identify(self.scope, token)
            await self.session.admit()
            await self.session.attach()
        except Refused as exc:
            return self.close_refused(exc)
        except (RedisError, OSError) as exc:
            logger.warning("connection refused, Redis unavailable: %s", exc, extra=self.log_context)
            self.conn.close(CloseCode.TRY_AGAIN_LATER)
            return
        self.conn.deliver(
            frames.reply(
                "hello",
                protocol=protocol.PROTOCOL_VERSION,
                connection=self.conn.id,
                user=self.conn.user,
                heartbeat=notifier_settings.HEARTBEAT_SECS,
            )
        )

    def close_refused(self, refused: Refused) -> None:
        """A connection the session refused: closed with the matching code (too many
        connections first says so in an error frame)."""
        if refused.code == ErrorCode.TOO_MANY_CONNECTIONS:
            self.conn.deliver(frames.error(refused.code, refused.message))
        self.conn.close(CLOSE_CODES.get(refused.code, CloseCode.FORBIDDEN))

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # Channels' version also closes old DB connections in a thread; we hold none.
        await self.disconnect(message.get("code", 1000))
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "session"):
            await self.session.end()

    @property
    def log_context(self) -> dict[str, str | None]:
        return self.conn.log_context

    # -- frames ----------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.conn.closed:
            return
        self.conn.touch()
        if not self._frames.take():
            return self.refuse(ErrorCode.RATE_LIMITED, "too many frames; slow down")
        try:
            frame = protocol.parse_frame(text_data, bytes_data, notifier_settings.MAX_FRAME_BYTES)
            await self.handle(frame)
        except protocol.ProtocolError as exc:
            self.refuse(exc.code, exc.message, exc.ref)
        except Exception:  # a bug: answer this frame, keep the socket (its state is intact)
            logger.exception("frame failed", extra=self.log_context)
            self.conn.deliver(frames.error(ErrorCode.INTERNAL, "internal error; see the server log"))

    def refuse(self, code: str, message: str, ref: Any = None) -> None:
        """Answer with an error frame; a flood of them closes the socket as abuse."""
        self.conn.deliver(frames.error(code, message, ref))
        now = time.monotonic()
        self._bad_frames = [t for t in self._bad_frames if now - t < BAD_FRAME_WINDOW_SECS] + [now]
        if len(self._bad_frames) > BAD_FRAME_BUDGET:
            self.conn.close(CloseCode.PROTOCOL_VIOLATION)

    async def handle(self, frame: protocol.ClientFrame) -> None:
        session = self.session
        try:
            match frame:
                case protocol.Subscribe():
                    session.check_room(len(self.conn.subscriptions) + 1)
                    await session.authorize(frame.channel, frame.token)
                    await session.subscribe(frame.channel, frame.since, frame.ref)
                case protocol.Unsubscribe():
                    await session.unsubscribe(frame.channel, frame.ref)
                case protocol.Ping():
                    self.conn.deliver(frames.reply("pong", frame.ref))
                case protocol.Pong():
                    pass
                case protocol.Publish():
                    await session.publish(frame.channel, frame.event, frame.data, frame.ref)
                case protocol.Auth():
                    await self.authenticate(frame)
                case protocol.Refresh():
                    await session.refresh(frame.token, frame.ref)
        except Refused as exc:
            self.refuse(exc.code, exc.message, frame.ref)
        except (RedisError, OSError) as exc:
            logger.warning("%s failed, Redis unavailable: %s", type(frame).__name__, exc, extra=self.log_context)
            self.refuse(ErrorCode.UNAVAILABLE, "the service is temporarily unavailable; retry", frame.ref)

    async def authenticate(self, frame: protocol.Auth) -> None:
        """A token refused here closes the socket, as it would have at connect."""
        try:
            await self.session.authenticate(frame.token, frame.ref)
        except Refused as exc:
            if exc.code not in CLOSE_CODES:
                raise
            self.close_refused(exc)
