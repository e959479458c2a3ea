"""Server-Sent Events: the same channels for clients that cannot use WebSockets, and for curl.

    GET /sse/?channel=news&channel=orders.eu[&token=…][&since=…]

Same authentication and authorization as the WebSocket endpoint (token in `?token=` or
`Authorization: Bearer`, the Django session, or anonymous), same hub, same recovery: each
event's SSE `id` is the client's position in every channel (compact JSON), so a reconnect
with `Last-Event-ID` (browsers send it by themselves) or `?since=` resumes exactly after it.
Heartbeats are SSE comments.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from redis.exceptions import RedisError

from . import metrics
from .authorization import Identity, get_authorizer
from .channels import InvalidChannel, validate_channel
from .codes import CloseCode
from .conf import notifier_settings
from .connection import Connection
from .events import dumps
from .history import Position
from .hub import PING_FRAME, Subscription, get_hub
from .tokens import InvalidToken, TokenExpired, decode_connection_token

logger = logging.getLogger(__name__)

EVENT_PREFIX = '{"type":"event"'


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def parse_positions(raw: str | None) -> dict[str, Position]:
    """`{"news": [42, "epoch"], …}` (an SSE id) into positions; refused when malformed."""
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
        return {str(ch): Position(int(pos[0]), str(pos[1])) for ch, pos in parsed.items()}
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        raise RequestError(400, "bad_since", "since / Last-Event-ID must be an id this endpoint sent") from None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class EventStream:
    """Turns the hub's frames for one connection into SSE messages on one HTTP response."""

    def __init__(self, send: Any, positions: dict[str, Position]) -> None:
        self._send = send
        self.positions = dict(positions)
        self.conn = Connection(self.write)
        self.closed = asyncio.Event()

    async def write(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            await self._chunk(f"event: close\ndata: {dumps({'code': message.get('code', 1000)})}\n\n", more=False)
            self.closed.set()
            return
        text: str = message["text"]
        if text == PING_FRAME:
            await self._chunk(": ping\n\n")
            self.conn.touch()  # SSE clients cannot answer; a write that went through is the proof
        elif text.startswith(EVENT_PREFIX):
            frame = json.loads(text)
            self.positions[frame["channel"]] = Position(frame["offset"], frame["epoch"])
            position_id = dumps({ch: [p.offset, p.epoch] for ch, p in self.positions.items()})
            await self._chunk(f"id: {position_id}\nevent: event\ndata: {text}\n\n")
        else:
            kind = json.loads(text).get("type", "message")
            await self._chunk(f"event: {kind}\ndata: {text}\n\n")

    async def _chunk(self, body: str, more: bool = True) -> None:
        await self._send({"type": "http.response.body", "body": body.encode(), "more_body": more})


class ServerSentEventsApp:
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            channels, identity, positions = await self._parse(scope)
        except RequestError as exc:
            await _error(send, exc.status, exc.code, exc.message)
            return
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
        stream = EventStream(send, positions)
        await self._serve(stream, channels, identity, receive)

    async def _parse(self, scope: dict[str, Any]) -> tuple[list[str], Identity, dict[str, Position]]:
        if scope["method"] not in ("GET", "HEAD"):
            raise RequestError(405, "method_not_allowed", "use GET")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        channels = list(dict.fromkeys(query.get("channel", [])))
        if not channels:
            raise RequestError(400, "bad_channel", "give at least one ?channel=")
        limit = notifier_settings.MAX_SUBSCRIPTIONS_PER_CONNECTION
        if len(channels) > limit:
            raise RequestError(400, "too_many_subscriptions", f"at most {limit} channels")
        for channel in channels:
            try:
                validate_channel(channel)
            except InvalidChannel as exc:
                raise RequestError(400, "bad_channel", f"{channel!r}: {exc}") from None
        identity = self._identity(scope, query)
        authorizer = get_authorizer()
        for channel in channels:
            refusal = await authorizer.can_subscribe(identity, channel)
            if refusal is not None:
                status = 404 if refusal.code == "unknown_channel" else 403
                raise RequestError(status, str(refusal.code), refusal.message)
        since = _header(scope, b"last-event-id") or query.get("since", [None])[0]
        return channels, identity, parse_positions(since)

    @staticmethod
    def _identity(scope: dict[str, Any], query: dict[str, list[str]]) -> Identity:
        token = query.get("token", [None])[0]
        authorization = _header(scope, b"authorization") or ""
        if token is None and authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ").strip()
        if token is not None:
            try:
                claims = decode_connection_token(token)
            except TokenExpired:
                raise RequestError(401, "token_expired", "token expired") from None
            except InvalidToken as exc:
                raise RequestError(401, "invalid_token", str(exc)) from None
            return Identity(claims.user, claims)
        user = scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return Identity(str(user.pk), django_user=user)
        return Identity()

    async def _serve(self, stream: EventStream, channels: list[str], identity: Identity, receive: Any) -> None:
        hub = get_hub()
        conn = stream.conn
        conn.user, conn.expires_at = identity.user, identity.expires_at
        metrics.inc("notifier_connections_opened", transport="sse")
        disconnected = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await hub.add_connection(conn)
            for channel in channels:
                await hub.subscribe(channel, conn, stream.positions.get(channel), _announcer(conn, channel))
            closed = asyncio.ensure_future(stream.closed.wait())
            await asyncio.wait([disconnected, closed], return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
        except (RedisError, OSError) as exc:
            logger.warning("sse connection %s: %s", conn.id, exc)
            conn.close(CloseCode.TRY_AGAIN_LATER)
            await asyncio.wait([disconnected], timeout=1)
        finally:
            disconnected.cancel()
            await hub.remove_connection(conn)


def _announcer(conn: Connection, channel: str) -> Any:
    def announce(sub: Subscription) -> None:
        conn.deliver(
            dumps(
                {
                    "type": "subscribed",
                    "channel": channel,
                    "offset": sub.position.offset,
                    "epoch": sub.position.epoch,
                    "recovered": sub.recovered,
                }
            )
        )

    return announce


async def _wait_for_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _error(send: Any, status: int, code: str, message: str) -> None:
    body = dumps({"code": code, "message": message, "details": {}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
