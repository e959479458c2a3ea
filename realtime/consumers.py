"""The WebSocket consumer: thin. It parses a frame, asks the domain, and queues reply frames.

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

from . import frames, membership, metrics, protocol
from .authorization import Identity, get_authorizer
from .codes import CloseCode, ErrorCode
from .conf import notifier_settings
from .connection import Connection
from .hub import Hub, Subscription
from .limits import TokenBucket
from .presence import get_presence
from .process import get_hub, is_draining
from .publish import PublishError, apublish
from .tokens import InvalidToken, TokenExpired, decode_connection_token

logger = logging.getLogger(__name__)

# More refused frames than this within the window is abuse: close with 4502.
BAD_FRAME_BUDGET = 20
BAD_FRAME_WINDOW_SECS = 10.0


class NotifierConsumer(AsyncWebsocketConsumer):
    conn: Connection
    hub: Hub
    identity: Identity

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
        self.hub = get_hub()
        self.conn = Connection(self.base_send)
        self._bad_frames: list[float] = []
        self._frames = TokenBucket(notifier_settings.CLIENT_FRAMES_PER_SEC)
        self._publishes = TokenBucket(notifier_settings.CLIENT_PUBLISH_PER_SEC)
        self._token_grants: set[str] = set()  # channels subscribed with a subscription token
        identity = self._identity_from_scope()
        if identity is None:
            return  # refused and closed
        if is_draining():  # shutting down: go elsewhere
            self.conn.close(CloseCode.SHUTDOWN)
            return
        try:
            await self.hub.add_connection(self.conn)
            if identity.user is not None and not await self._register(identity):
                return
        except (RedisError, OSError) as exc:
            logger.warning("connection refused, Redis unavailable: %s", exc, extra=self.log_context)
            self.conn.close(CloseCode.TRY_AGAIN_LATER)
            return
        self._set_identity(identity)
        metrics.inc("notifier_connections_opened", transport="websocket")
        if identity.user is None and not notifier_settings.ALLOW_ANONYMOUS:
            self.conn.auth_deadline = time.monotonic() + notifier_settings.AUTH_TIMEOUT_SECS
        self.conn.deliver(
            frames.reply(
                "hello",
                protocol=protocol.PROTOCOL_VERSION,
                connection=self.conn.id,
                user=identity.user,
                heartbeat=notifier_settings.HEARTBEAT_SECS,
            )
        )

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # Channels' version also closes old DB connections in a thread; we hold none.
        await self.disconnect(message.get("code", 1000))
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "conn"):
            return
        await self.hub.remove_connection(self.conn)
        presence = get_presence()
        try:
            for channel in list(self.conn.presence_channels):
                await membership.leave(self.conn, channel)
            if self.conn.user is not None:
                await presence.unregister_connection(self.conn.user, self.conn.id)
        except (RedisError, OSError) as exc:  # entries expire on their own
            logger.warning("presence cleanup failed: %s", exc, extra=self.log_context)
            metrics.inc("notifier_redis_errors", operation="presence")

    def _identity_from_scope(self) -> Identity | None:
        """From `?token=` or the Django session; None when the token was refused (socket closed)."""
        token = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
        if token is not None:
            claims = self._decode_or_close(token)
            return Identity(claims.user, claims) if claims else None
        user = self.scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return Identity(str(user.pk), django_user=user)
        return Identity()

    def _decode_or_close(self, token: str) -> Any:
        try:
            return decode_connection_token(token)
        except TokenExpired:
            self.conn.close(CloseCode.TOKEN_EXPIRED)
        except InvalidToken as exc:
            logger.info("token refused: %s", exc, extra=self.log_context)
            self.conn.close(CloseCode.INVALID_TOKEN)
        return None

    async def _register(self, identity: Identity) -> bool:
        """Count the connection against the user's limit; close with 4503 when over it."""
        assert identity.user is not None
        limit = notifier_settings.MAX_CONNECTIONS_PER_USER
        if await get_presence().register_connection(identity.user, self.conn.id, limit):
            return True
        self.conn.deliver(frames.error(ErrorCode.TOO_MANY_CONNECTIONS, f"at most {limit} connections per user"))
        self.conn.close(CloseCode.TOO_MANY_CONNECTIONS)
        return False

    @property
    def log_context(self) -> dict[str, str | None]:
        return self.conn.log_context

    def _set_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.conn.user = identity.user
        self.conn.expires_at = identity.expires_at
        self.conn.auth_deadline = None

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
        match frame:
            case protocol.Subscribe():
                await self.subscribe(frame)
            case protocol.Unsubscribe():
                await self.unsubscribe(frame)
            case protocol.Ping():
                self.conn.deliver(frames.reply("pong", frame.ref))
            case protocol.Pong():
                pass
            case protocol.Publish():
                await self.publish(frame)
            case protocol.Auth():
                await self.authenticate(frame)
            case protocol.Refresh():
                await self.refresh(frame)

    async def authenticate(self, frame: protocol.Auth) -> None:
        if self.identity.user is not None:
            return self.refuse(ErrorCode.FORBIDDEN, "already authenticated; use refresh", frame.ref)
        claims = self._decode_or_close(frame.token)
        if claims is None:
            return
        identity = Identity(claims.user, claims)
        try:
            if not await self._register(identity):
                return
        except (RedisError, OSError):
            return self.refuse(ErrorCode.UNAVAILABLE, "the service is temporarily unavailable; retry", frame.ref)
        anonymous_presence = list(self.conn.presence_channels)
        for channel in anonymous_presence:  # leave as anonymous...
            await membership.leave_or_log(self.conn, channel)
        self._set_identity(identity)
        self.conn.deliver(frames.reply("authenticated", frame.ref, user=identity.user))
        for channel in anonymous_presence:  # ...and come back as the user
            try:
                await membership.join(self.conn, channel)
            except (RedisError, OSError) as exc:  # the presence refresh loop adds it later
                logger.warning("presence join failed: %s", exc, extra=self.log_context)
                metrics.inc("notifier_redis_errors", operation="presence")

    async def refresh(self, frame: protocol.Refresh) -> None:
        try:
            claims = decode_connection_token(frame.token)
        except TokenExpired:
            return self.refuse(ErrorCode.TOKEN_EXPIRED, "the new token is already expired", frame.ref)
        except InvalidToken as exc:
            return self.refuse(ErrorCode.INVALID_TOKEN, str(exc), frame.ref)
        if claims.user != self.identity.user:
            return self.refuse(ErrorCode.FORBIDDEN, "a refresh token must be for the same user", frame.ref)
        self._set_identity(Identity(claims.user, claims, self.identity.django_user))
        self.conn.deliver(frames.reply("authenticated", frame.ref, user=claims.user))
        await self._recheck_subscriptions()

    async def _recheck_subscriptions(self) -> None:
        """After a refresh, end the subscriptions the new token no longer allows.

        One granted by a subscription token stays: that token named this user and channel,
        and a refresh keeps the user.
        """
        authorizer = get_authorizer()
        for channel in sorted(self.conn.subscriptions):
            if channel in self._token_grants:
                continue
            refusal = await authorizer.can_subscribe(self.identity, channel)
            if refusal is None or channel not in self.conn.subscriptions:
                continue
            await self.hub.unsubscribe(channel, self.conn)
            self.conn.deliver(
                frames.reply(
                    "error",
                    code=str(ErrorCode.FORBIDDEN),
                    message=f"the refreshed token does not allow {channel!r}; unsubscribed",
                    channel=channel,
                )
            )
            await membership.leave_or_log(self.conn, channel)

    async def subscribe(self, frame: protocol.Subscribe) -> None:
        if frame.channel in self.conn.subscriptions:
            return self.refuse(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {frame.channel!r}", frame.ref)
        limit = notifier_settings.MAX_SUBSCRIPTIONS_PER_CONNECTION
        if len(self.conn.subscriptions) >= limit:
            return self.refuse(ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} subscriptions", frame.ref)
        authorizer = get_authorizer()
        refusal = await authorizer.can_subscribe(self.identity, frame.channel, frame.token)
        if refusal is not None:
            return self.refuse(refusal.code, refusal.message, frame.ref)
        if frame.token is not None and authorizer.subscription_token_grants(self.identity, frame.channel, frame.token):
            self._token_grants.add(frame.channel)
        else:
            self._token_grants.discard(frame.channel)

        def announce(sub: Subscription) -> None:
            self.conn.deliver(frames.subscribed(frame.channel, sub.position, sub.recovered, frame.ref))

        try:
            await self.hub.subscribe(frame.channel, self.conn, frame.since, announce)
            await membership.join(self.conn, frame.channel)
        except (RedisError, OSError) as exc:
            logger.warning("subscribe to %s failed: %s", frame.channel, exc, extra=self.log_context)
            self.refuse(ErrorCode.UNAVAILABLE, "the service is temporarily unavailable; retry", frame.ref)

    async def unsubscribe(self, frame: protocol.Unsubscribe) -> None:
        if frame.channel not in self.conn.subscriptions:
            return self.refuse(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {frame.channel!r}", frame.ref)
        await self.hub.unsubscribe(frame.channel, self.conn)
        self._token_grants.discard(frame.channel)
        self.conn.deliver(frames.reply("unsubscribed", frame.ref, channel=frame.channel))
        await membership.leave_or_log(self.conn, frame.channel)

    async def publish(self, frame: protocol.Publish) -> None:
        refusal = await get_authorizer().can_publish(self.identity, frame.channel)
        if refusal is not None:
            return self.refuse(refusal.code, refusal.message, frame.ref)
        if not self._publishes.take():
            return self.refuse(ErrorCode.RATE_LIMITED, "publishing too fast; slow down", frame.ref)
        try:
            result = await apublish(
                [frame.channel], frame.event, frame.data, sender=self.identity.user, publisher="client"
            )
        except PublishError as exc:
            return self.refuse(exc.code, exc.message, frame.ref)
        position = result.channels[frame.channel]
        self.conn.deliver(
            frames.reply("published", frame.ref, channel=frame.channel, offset=position.offset, id=result.id)
        )
