"""Server-Sent Events: the same channels for clients that cannot use WebSockets, and for curl.

    GET /sse/?channel=news&channel=private:x[&token=…][&sub_token=…][&since=…]

Same authentication and authorization as the WebSocket endpoint (token in `?token=` or
`Authorization: Bearer`, the Django session, or anonymous; a `sub_token` per private channel,
bound to its channel by its own `channel` claim), the same per-user connection limit, same hub,
same recovery: every `subscribed` and `event` message carries an SSE `id`, the client's position
in every channel of the stream (compact JSON), so a reconnect with `Last-Event-ID` (browsers send
it by themselves) or `?since=` resumes exactly after it. Heartbeats are SSE comments. A draining
server (SIGTERM) refuses new streams with 503 and ends open ones with `event: close`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from redis.exceptions import RedisError

from . import frames, membership, metrics
from .authorization import Identity, get_authorizer
from .channels import InvalidChannel, validate_channel
from .codes import CloseCode, ErrorCode
from .conf import notifier_settings
from .connection import Connection
from .events import dumps
from .history import Position
from .hub import Subscription
from .presence import get_presence
from .process import get_hub, is_draining
from .scope import header
from .tokens import InvalidToken, TokenExpired, decode_connection_token, decode_subscription_token

logger = logging.getLogger(__name__)

# HTTP status of the authorizer's refusal codes (anything else is 403).
REFUSAL_STATUS = {ErrorCode.UNKNOWN_CHANNEL: 404, ErrorCode.INVALID_TOKEN: 401, ErrorCode.TOKEN_EXPIRED: 401}


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


MAX_EPOCH_LENGTH = 64  # ours are 8 hex digits


def parse_positions(raw: str | None) -> dict[str, Position]:
    """`{"news": [42, "epoch"], …}` (an SSE id) into positions; refused when malformed."""
    if not raw:
        return {}
    refused = RequestError(400, "bad_since", "since / Last-Event-ID must be an id this endpoint sent")
    try:
        parsed = json.loads(raw)
        positions = {str(ch): Position(pos[0], pos[1]) for ch, pos in parsed.items()}
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError):
        raise refused from None
    for position in positions.values():
        offset, epoch = position.offset, position.epoch
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or not isinstance(epoch, str):
            raise refused
        if len(epoch) > MAX_EPOCH_LENGTH:
            raise refused
    return positions


class EventStream:
    """Turns the hub's frames for one connection into SSE messages on one HTTP response.

    `positions` is where the client is in each channel of the stream. `subscribed` and `event`
    messages carry it as their SSE `id`, so the last id a client saw covers every channel it
    has been told about, even one that has had no event yet.
    """

    def __init__(self, send: Any, positions: dict[str, Position] | None = None) -> None:
        self._send = send
        self.positions = dict(positions or {})
        self.conn = Connection(self.write)
        self.closed = asyncio.Event()

    async def write(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            await self._chunk(f"event: close\ndata: {frames.closed(message.get('code', 1000))}\n\n", more=False)
            self.closed.set()
            return
        text: str = message["text"]
        if text == frames.PING:
            await self._chunk(": ping\n\n")
            self.conn.touch()  # SSE clients cannot answer; a write that went through is the proof
        elif text.startswith(frames.EVENT_PREFIX):
            frame = json.loads(text)
            self.positions[frame["channel"]] = Position(frame["offset"], frame["epoch"])
            await self._chunk(f"id: {self._id()}\nevent: event\ndata: {text}\n\n")
        elif text.startswith(frames.SUBSCRIBED_PREFIX):
            self._subscribed(json.loads(text))
            await self._chunk(f"id: {self._id()}\nevent: subscribed\ndata: {text}\n\n")
        else:
            kind = json.loads(text).get("type", "message")
            await self._chunk(f"event: {kind}\ndata: {text}\n\n")

    def _subscribed(self, frame: dict[str, Any]) -> None:
        """Where the client is once it reads this `subscribed` frame.

        Recovered from a position it gave: still there, since the replay of the events after it
        (up to `offset`) follows; a reconnect right now must not skip that replay. Otherwise (a
        fresh subscription, or `recovered: false`, which means "refetch your state"): `offset`.
        """
        channel, here = frame["channel"], Position(frame["offset"], frame["epoch"])
        had = self.positions.get(channel)
        if frame.get("recovered") and had is not None:
            # The hub recovers only within one epoch (or from offset 0), and a position past
            # the channel's latest offset is treated as the latest.
            here = Position(min(had.offset, here.offset), here.epoch)
        self.positions[channel] = here

    def _id(self) -> str:
        return dumps({ch: [p.offset, p.epoch] for ch, p in self.positions.items()})

    async def _chunk(self, body: str, more: bool = True) -> None:
        await self._send({"type": "http.response.body", "body": body.encode(), "more_body": more})


class ServerSentEventsApp:
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        stream = EventStream(send)
        conn = stream.conn
        try:
            if is_draining():  # shutting down (SIGTERM): go elsewhere
                raise RequestError(503, ErrorCode.UNAVAILABLE, "the server is shutting down; reconnect")
            channels, identity, positions = await self._parse(scope, conn)
            stream.positions = {ch: pos for ch, pos in positions.items() if ch in channels}
            conn.user, conn.expires_at = identity.user, identity.expires_at
            await _register(conn)
        except RequestError as exc:
            await _error(send, exc.status, exc.code, exc.message)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),  # nginx: stream, do not buffer
                    ],
                }
            )
            await self._serve(stream, channels, receive)
        finally:
            await _unregister(conn)

    async def _parse(self, scope: dict[str, Any], conn: Connection) -> tuple[list[str], Identity, dict[str, Position]]:
        if scope["method"] not in ("GET", "HEAD"):
            raise RequestError(405, "method_not_allowed", "use GET")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        channels = list(dict.fromkeys(query.get("channel", [])))
        if not channels:
            raise RequestError(400, ErrorCode.BAD_CHANNEL, "give at least one ?channel=")
        limit = notifier_settings.MAX_SUBSCRIPTIONS_PER_CONNECTION
        if len(channels) > limit:
            raise RequestError(400, ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} channels")
        for channel in channels:
            try:
                validate_channel(channel)
            except InvalidChannel as exc:
                raise RequestError(400, ErrorCode.BAD_CHANNEL, f"{channel!r}: {exc}") from None
        identity = self._identity(scope, query, conn)
        sub_tokens = _subscription_tokens(query.get("sub_token", []), channels)
        authorizer = get_authorizer()
        for channel in channels:
            refusal = await authorizer.can_subscribe(identity, channel, sub_tokens.get(channel))
            if refusal is not None:
                raise RequestError(REFUSAL_STATUS.get(refusal.code, 403), str(refusal.code), refusal.message)
        since = header(scope, b"last-event-id") or query.get("since", [None])[0]
        return channels, identity, parse_positions(since)

    @staticmethod
    def _identity(scope: dict[str, Any], query: dict[str, list[str]], conn: Connection) -> Identity:
        token = query.get("token", [None])[0]
        authorization = header(scope, b"authorization") or ""
        if token is None and authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ").strip()
        if token is not None:
            try:
                claims = decode_connection_token(token)
            except TokenExpired:
                raise RequestError(401, ErrorCode.TOKEN_EXPIRED, "token expired") from None
            except InvalidToken as exc:
                logger.info("token refused: %s", exc, extra=conn.log_context)
                raise RequestError(401, ErrorCode.INVALID_TOKEN, str(exc)) from None
            return Identity(claims.user, claims)
        user = scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return Identity(str(user.pk), django_user=user)
        return Identity()

    async def _serve(self, stream: EventStream, channels: list[str], receive: Any) -> None:
        hub = get_hub()
        conn = stream.conn
        metrics.inc("notifier_connections_opened", transport="sse")
        disconnected = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await hub.add_connection(conn)
            if is_draining():  # SIGTERM came while this stream was being set up: end it now
                conn.close(CloseCode.SHUTDOWN)
            for channel in [] if conn.closed else channels:
                await hub.subscribe(channel, conn, stream.positions.get(channel), _announcer(conn, channel))
                await membership.join(conn, channel)
            closed = asyncio.ensure_future(stream.closed.wait())
            await asyncio.wait([disconnected, closed], return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
        except (RedisError, OSError) as exc:
            logger.warning("sse stream failed, Redis unavailable: %s", exc, extra=conn.log_context)
            conn.close(CloseCode.TRY_AGAIN_LATER)
            await asyncio.wait([disconnected], timeout=1)
        finally:
            disconnected.cancel()
            await hub.remove_connection(conn)
            for channel in list(conn.presence_channels):
                await membership.leave_or_log(conn, channel)


def _subscription_tokens(tokens: list[str], channels: list[str]) -> dict[str, str]:
    """`?sub_token=` values by the channel each one's own `channel` claim names.

    Refused: a token that does not decode, one for a channel the stream does not ask for, and
    two for one channel. Whether a token grants its channel (user, namespace) is the
    authorizer's decision, as for the WebSocket `subscribe` op's `token`.
    """
    by_channel: dict[str, str] = {}
    for token in tokens:
        try:
            channel = decode_subscription_token(token).channel
        except TokenExpired:
            raise RequestError(401, ErrorCode.TOKEN_EXPIRED, "a sub_token expired") from None
        except InvalidToken as exc:
            raise RequestError(401, ErrorCode.INVALID_TOKEN, f"sub_token: {exc}") from None
        if channel not in channels:
            raise RequestError(400, ErrorCode.BAD_CHANNEL, f"a sub_token is for {channel!r}, not a ?channel= given")
        if channel in by_channel:
            raise RequestError(400, ErrorCode.BAD_CHANNEL, f"more than one sub_token for {channel!r}")
        by_channel[channel] = token
    return by_channel


async def _register(conn: Connection) -> None:
    """Count an authenticated stream against MAX_CONNECTIONS_PER_USER, as /ws/ does."""
    if conn.user is None:
        return
    limit = notifier_settings.MAX_CONNECTIONS_PER_USER
    try:
        registered = await get_presence().register_connection(conn.user, conn.id, limit)
    except (RedisError, OSError) as exc:
        logger.warning("sse stream refused, Redis unavailable: %s", exc, extra=conn.log_context)
        raise RequestError(503, ErrorCode.UNAVAILABLE, "the service is temporarily unavailable; retry") from None
    if not registered:
        raise RequestError(429, ErrorCode.TOO_MANY_CONNECTIONS, f"at most {limit} connections per user")


async def _unregister(conn: Connection) -> None:
    if conn.user is None:
        return
    try:
        await get_presence().unregister_connection(conn.user, conn.id)
    except (RedisError, OSError) as exc:  # the entry expires on its own
        logger.warning("presence cleanup failed: %s", exc, extra=conn.log_context)
        metrics.inc("notifier_redis_errors", operation="presence")


def _announcer(conn: Connection, channel: str) -> Any:
    def announce(sub: Subscription) -> None:
        conn.deliver(frames.subscribed(channel, sub.position, sub.recovered))

    return announce


async def _wait_for_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _error(send: Any, status: int, code: str, message: str) -> None:
    body = dumps({"code": code, "message": message, "details": {}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
