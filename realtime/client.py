"""One connected client, whatever its transport: the rules a WebSocket and an SSE stream share.

A `ClientSession` holds a connection's identity (token, Django session, or anonymous), its
limits (connections per user, subscriptions per connection, client publishes per second),
subscribe and unsubscribe (authorization, subscription-token grants, presence), auth and
refresh, and the cleanup when the connection ends. The transports (realtime/consumers.py,
realtime/sse.py) are adapters: they read requests in their own framing, call the session, and
answer a `Refused` in theirs (an error frame or close code; an HTTP status).

Liveness is the hub's (heartbeats, token expiry, the anonymous deadline on `Connection`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError

from . import frames, membership, metrics, online, rosters
from .authorization import Identity, get_authorizer
from .codes import CloseCode, ErrorCode
from .conf import notifier_settings
from .connection import Connection
from .history import Position
from .hub import Subscription
from .limits import TokenBucket
from .process import get_hub, is_draining
from .publish import PublishError, apublish
from .tokens import ConnectionClaims, InvalidToken, TokenExpired, decode_connection_token

logger = logging.getLogger(__name__)


class Refused(Exception):
    """What the client asked for is refused; `code` is a stable ErrorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = str(code), message


class ShuttingDown(Refused):
    """The process is draining (SIGTERM): the client should go to another one."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, "the server is shutting down; reconnect")


class ClientSession:
    def __init__(self, conn: Connection, transport: str, log: logging.Logger = logger) -> None:
        self.conn = conn
        self.transport = transport  # "websocket" or "sse", for metrics
        self.log = log  # the transport's logger: its records say which transport they come from
        self.hub = get_hub()
        self.identity = Identity()
        self._publishes = TokenBucket(notifier_settings.CLIENT_PUBLISH_PER_SEC)
        self._token_grants: set[str] = set()  # channels subscribed with a subscription token
        self._registered = False  # counted against the user's connection limit
        self._ended = False

    @property
    def log_context(self) -> dict[str, str | None]:
        return self.conn.log_context

    # -- identity and the connection's life ----------------------------------------------------

    def identify(self, scope: dict[str, Any], token: str | None) -> None:
        """Who the client is: the connection token it gave, else its Django session, else nobody."""
        if token is not None:
            claims = self._decode(token)
            self._set_identity(Identity(claims.user, claims))
            return
        user = scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            self._set_identity(Identity(str(user.pk), django_user=user))

    async def admit(self) -> None:
        """Count the connection against its user's limit, unless the process is draining.

        Raises ShuttingDown, Refused (too many connections), or RedisError/OSError.
        """
        if is_draining():
            raise ShuttingDown()
        if self.identity.user is not None:
            await self._register(self.identity.user)

    async def attach(self) -> None:
        """Join the hub (heartbeats, token expiry, the anonymous deadline), once the transport
        can write. A drain that began meanwhile closes the connection at once."""
        await self.hub.add_connection(self.conn)
        if is_draining():
            self.conn.close(CloseCode.SHUTDOWN)
            return
        metrics.inc("notifier_connections_opened", transport=self.transport)
        if self.identity.user is None and not notifier_settings.ALLOW_ANONYMOUS:
            self.conn.auth_deadline = time.monotonic() + notifier_settings.AUTH_TIMEOUT_SECS

    async def end(self) -> None:
        """Leave the hub, every presence and the user's connection count. Every step is tried:
        a Redis error is logged and counted (the entries expire on their own)."""
        if self._ended:
            return
        self._ended = True
        await self.hub.remove_connection(self.conn)
        for channel in list(self.conn.presence_channels):
            await membership.leave_or_log(self.conn, channel)
        if self._registered and self.conn.user is not None:
            try:
                online.unregistered(
                    self.conn.user, await rosters.user_connections().remove(self.conn.user, self.conn.id)
                )
            except (RedisError, OSError) as exc:
                self.log.warning("presence cleanup failed: %s", exc, extra=self.log_context)
                metrics.inc("notifier_redis_errors", operation="presence")

    async def authenticate(self, token: str, ref: Any = None) -> None:
        """An anonymous connection authenticates: it counts for the user, and its presence moves
        from anonymous to the user. Raises Refused (or RedisError/OSError, nothing changed)."""
        if self.identity.user is not None:
            raise Refused(ErrorCode.FORBIDDEN, "already authenticated; use refresh")
        claims = self._decode(token)
        await self._register(claims.user)
        anonymous_presence = list(self.conn.presence_channels)
        for channel in anonymous_presence:  # leave as anonymous...
            await membership.leave_or_log(self.conn, channel)
        self._set_identity(Identity(claims.user, claims))
        self.conn.deliver(frames.reply("authenticated", ref, user=claims.user))
        for channel in anonymous_presence:  # ...and come back as the user
            try:
                await membership.join(self.conn, channel)
            except (RedisError, OSError) as exc:  # the presence refresh loop adds it later
                self.log.warning("presence join failed: %s", exc, extra=self.log_context)
                metrics.inc("notifier_redis_errors", operation="presence")

    async def refresh(self, token: str, ref: Any = None) -> None:
        """A new connection token for the same user; subscriptions it no longer allows end."""
        claims = self._decode(token, "the new token is already expired", log=False)
        if claims.user != self.identity.user:
            raise Refused(ErrorCode.FORBIDDEN, "a refresh token must be for the same user")
        self._set_identity(Identity(claims.user, claims, self.identity.django_user))
        self.conn.deliver(frames.reply("authenticated", ref, user=claims.user))
        await self._recheck_subscriptions()

    async def _recheck_subscriptions(self) -> None:
        """End the subscriptions a refreshed token no longer allows, each with an error frame.
        One granted by a subscription token stays: that token named this user and channel, and
        a refresh keeps the user."""
        authorizer = get_authorizer()
        for channel in sorted(self.conn.subscriptions):
            if channel in self._token_grants:
                continue
            refusal = await authorizer.can_subscribe(self.identity, channel)
            if refusal is None or channel not in self.conn.subscriptions:
                continue
            await self.hub.unsubscribe(channel, self.conn)
            message = f"the refreshed token does not allow {channel!r}; unsubscribed"
            self.conn.deliver(frames.error(ErrorCode.FORBIDDEN, message, channel=channel))
            await membership.leave_or_log(self.conn, channel)

    # -- subscriptions ---------------------------------------------------------------------------

    def check_room(self, count: int) -> None:
        """Refuse a connection that would hold more than `count` subscriptions."""
        limit = notifier_settings.MAX_SUBSCRIPTIONS_PER_CONNECTION
        if count > limit:
            raise Refused(ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} subscriptions")

    async def authorize(self, channel: str, token: str | None = None) -> None:
        """Whether this client may subscribe to `channel` (with a subscription `token`)."""
        if channel in self.conn.subscriptions:
            raise Refused(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {channel!r}")
        authorizer = get_authorizer()
        refusal = await authorizer.can_subscribe(self.identity, channel, token)
        if refusal is not None:
            raise Refused(refusal.code, refusal.message)
        if token is not None and authorizer.subscription_token_grants(self.identity, channel, token):
            self._token_grants.add(channel)
        else:
            self._token_grants.discard(channel)

    async def subscribe(self, channel: str, since: Position | None, ref: Any = None) -> None:
        """Subscribe (after `authorize`) from `since`, announced with `subscribed` before any
        event, and join the channel's presence. Raises RedisError/OSError."""

        def announce(sub: Subscription) -> None:
            self.conn.deliver_subscribed(channel, sub.position, sub.recovered, ref)

        await self.hub.subscribe(channel, self.conn, since, announce)
        await membership.join(self.conn, channel)

    async def unsubscribe(self, channel: str, ref: Any = None) -> None:
        if channel not in self.conn.subscriptions:
            raise Refused(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel!r}")
        await self.hub.unsubscribe(channel, self.conn)
        self._token_grants.discard(channel)
        self.conn.deliver(frames.reply("unsubscribed", ref, channel=channel))
        await membership.leave_or_log(self.conn, channel)

    async def publish(self, channel: str, event: str, data: Any, ref: Any = None) -> None:
        """A client's own publish, on a namespace that allows it, within its rate."""
        refusal = await get_authorizer().can_publish(self.identity, channel)
        if refusal is not None:
            raise Refused(refusal.code, refusal.message)
        if not self._publishes.take():
            raise Refused(ErrorCode.RATE_LIMITED, "publishing too fast; slow down")
        try:
            result = await apublish([channel], event, data, sender=self.identity.user, publisher="client")
        except PublishError as exc:
            raise Refused(exc.code, exc.message) from None
        offset = result.channels[channel].offset
        self.conn.deliver(frames.reply("published", ref, channel=channel, offset=offset, id=result.id))

    # -- helpers -----------------------------------------------------------------------------

    def _decode(self, token: str, expired: str = "token expired", log: bool = True) -> ConnectionClaims:
        try:
            return decode_connection_token(token)
        except TokenExpired:
            raise Refused(ErrorCode.TOKEN_EXPIRED, expired) from None
        except InvalidToken as exc:
            if log:
                self.log.info("token refused: %s", exc, extra=self.log_context)
            raise Refused(ErrorCode.INVALID_TOKEN, str(exc)) from None

    async def _register(self, user: str) -> None:
        limit = notifier_settings.MAX_CONNECTIONS_PER_USER
        code = await rosters.user_connections().add(user, self.conn.id, limit)
        if code == rosters.REFUSED:
            raise Refused(ErrorCode.TOO_MANY_CONNECTIONS, f"at most {limit} connections per user")
        self._registered = True
        online.registered(user, code)

    def _set_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.conn.user = identity.user
        self.conn.expires_at = identity.expires_at
        self.conn.auth_deadline = None
