"""The WebSocket consumer: thin. It parses a frame, calls the domain, and queues reply frames.

It is deliberately not a channel-layer member: the process's hub is, once, for all sockets
(DESIGN §8: a layer channel and receive loop per socket costs most of the gap to raw ASGI).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.utils import await_many_dispatch
from redis.exceptions import RedisError

from . import protocol
from .channels import policy_of
from .codes import CloseCode, ErrorCode
from .conf import notifier_settings
from .connection import Connection
from .hub import Hub, Subscription, get_hub
from .publish import PublishError, apublish

logger = logging.getLogger(__name__)

# More bad frames than this within the window is abuse: close with 4502.
BAD_FRAME_BUDGET = 20
BAD_FRAME_WINDOW_SECS = 10.0


class NotifierConsumer(AsyncWebsocketConsumer):
    conn: Connection
    hub: Hub

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # No per-socket channel-layer channel: the hub is this process's only layer member.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            await await_many_dispatch([receive], self.dispatch)
        except StopConsumer:
            pass

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' dispatch closes old DB connections in a thread on every frame; the socket
        # path touches no database, so call the handler directly.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        await self.accept()
        self.hub = get_hub()
        user = self.scope.get("notifier_user")
        self.conn = Connection(self.base_send, user=user)
        self._bad_frames: list[float] = []
        try:
            await self.hub.add_connection(self.conn)
        except (RedisError, OSError) as exc:
            logger.warning("connection refused, channel layer unavailable: %s", exc)
            await self.close(CloseCode.TRY_AGAIN_LATER)
            return
        self.conn.deliver(
            protocol.reply(
                "hello",
                protocol=protocol.PROTOCOL_VERSION,
                connection=self.conn.id,
                user=user,
                heartbeat=notifier_settings.HEARTBEAT_SECS,
            )
        )

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "conn"):
            await self.hub.remove_connection(self.conn)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.conn.touch()
        try:
            frame = protocol.parse_frame(text_data, bytes_data, notifier_settings.MAX_FRAME_BYTES)
            await self.handle(frame)
        except protocol.ProtocolError as exc:
            self.refuse(exc.code, exc.message, exc.ref)

    def refuse(self, code: str, message: str, ref: Any = None) -> None:
        """Answer with an error frame; a flood of them closes the socket as abuse."""
        self.conn.deliver(protocol.error_frame(code, message, ref))
        now = time.monotonic()
        self._bad_frames = [t for t in self._bad_frames if now - t < BAD_FRAME_WINDOW_SECS] + [now]
        if len(self._bad_frames) > BAD_FRAME_BUDGET:
            self.conn.close(CloseCode.PROTOCOL_VIOLATION)

    async def handle(self, frame: protocol.ClientFrame) -> None:
        match frame:
            case protocol.Subscribe():
                await self.subscribe(frame)
            case protocol.Unsubscribe():
                await self.unsubscribe(frame)
            case protocol.Ping():
                self.conn.deliver(protocol.reply("pong", frame.ref))
            case protocol.Pong():
                pass
            case protocol.Publish():
                await self.publish(frame)
            case protocol.Auth() | protocol.Refresh():
                self.refuse(ErrorCode.FORBIDDEN, "token authentication is not enabled", frame.ref)

    async def subscribe(self, frame: protocol.Subscribe) -> None:
        policy = policy_of(frame.channel)
        if policy is None:
            return self.refuse(ErrorCode.UNKNOWN_CHANNEL, f"unknown namespace in {frame.channel!r}", frame.ref)
        if not policy.public:
            return self.refuse(ErrorCode.FORBIDDEN, f"not allowed to subscribe to {frame.channel!r}", frame.ref)
        if frame.channel in self.conn.subscriptions:
            return self.refuse(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {frame.channel!r}", frame.ref)

        def announce(sub: Subscription) -> None:
            self.conn.deliver(
                protocol.reply(
                    "subscribed",
                    frame.ref,
                    channel=frame.channel,
                    offset=sub.position.offset,
                    epoch=sub.position.epoch,
                    recovered=sub.recovered,
                )
            )

        try:
            await self.hub.subscribe(frame.channel, self.conn, frame.since, announce)
        except (RedisError, OSError) as exc:
            logger.warning("subscribe to %s failed: %s", frame.channel, exc)
            self.refuse(ErrorCode.UNAVAILABLE, "the service is temporarily unavailable; retry", frame.ref)

    async def unsubscribe(self, frame: protocol.Unsubscribe) -> None:
        if frame.channel not in self.conn.subscriptions:
            return self.refuse(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {frame.channel!r}", frame.ref)
        await self.hub.unsubscribe(frame.channel, self.conn)
        self.conn.deliver(protocol.reply("unsubscribed", frame.ref, channel=frame.channel))

    async def publish(self, frame: protocol.Publish) -> None:
        policy = policy_of(frame.channel)
        if policy is None or not policy.client_publish or not policy.public:
            return self.refuse(ErrorCode.FORBIDDEN, f"clients may not publish to {frame.channel!r}", frame.ref)
        try:
            result = await apublish([frame.channel], frame.event, frame.data, sender=self.conn.user)
        except PublishError as exc:
            code = ErrorCode.PAYLOAD_TOO_LARGE if exc.code == "payload_too_large" else exc.code
            return self.refuse(code, exc.message, frame.ref)
        position = result.channels[frame.channel]
        self.conn.deliver(
            protocol.reply("published", frame.ref, channel=frame.channel, offset=position.offset, id=result.id)
        )
