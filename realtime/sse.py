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

from . import frames
from .channels import InvalidChannel, validate_channel
from .client import ClientSession, Refused
from .codes import CloseCode, ErrorCode
from .connection import Connection
from .events import dumps
from .history import Position
from .scope import header
from .tokens import InvalidToken, TokenExpired, decode_subscription_token

logger = logging.getLogger(__name__)

# HTTP status of the session's refusal codes (anything else is 403).
REFUSAL_STATUS: dict[str, int] = {
    ErrorCode.UNKNOWN_CHANNEL: 404,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: 400,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.UNAVAILABLE: 503,
}


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


class StreamConnection(Connection):
    """A connection whose frames are SSE messages on one HTTP response.

    `positions` is where the client is in each channel of the stream. `subscribed` and `event`
    messages carry it as their SSE `id`, so the last id a client saw covers every channel it
    has been told about, even one that has had no event yet. The hub hands each event with its
    channel and position (realtime/connection.py), so no frame is read here.
    """

    def __init__(self, send: Any, positions: dict[str, Position] | None = None) -> None:
        super().__init__(self._write_http)
        self._http_send = send
        self.positions = dict(positions or {})
        self.ended = asyncio.Event()  # the `close` message is written

    def deliver_event(
        self, frame: str, replay: bool = False, channel: str | None = None, offset: int = 0, epoch: str = ""
    ) -> None:
        assert channel is not None
        self.positions[channel] = Position(offset, epoch)
        self._queue(frames.sse_message("event", frame, self._id()), replay)

    def deliver_subscribed(self, channel: str, position: Position, recovered: bool, ref: Any = None) -> None:
        """Where the client is once it reads this `subscribed` message.

        Recovered from a position it gave: still there, since the replay of the events after it
        (up to `position`) follows; a reconnect right now must not skip that replay. Otherwise (a
        fresh subscription, or `recovered: false`, which means "refetch your state"): `position`.
        """
        had = self.positions.get(channel)
        here = position
        if recovered and had is not None:
            # The hub recovers only within one epoch (or from offset 0), and a position past
            # the channel's latest offset is treated as the latest.
            here = Position(min(had.offset, position.offset), position.epoch)
        self.positions[channel] = here
        text = frames.subscribed(channel, position, recovered, ref)
        self._queue(frames.sse_message("subscribed", text, self._id()))

    def deliver_presence(self, kind: str, frame: str) -> None:
        self._queue(frames.sse_message(kind, frame))

    def ping(self) -> None:
        self._queue(frames.SSE_PING)

    def deliver(
        self, frame: str, replay: bool = False, channel: str | None = None, offset: int = 0, epoch: str = ""
    ) -> None:
        """A frame of no kind above (no stream is sent one today) goes out as `event: message`."""
        self._queue(frames.sse_message("message", frame), replay)

    def _queue(self, message: str, replay: bool = False) -> None:
        Connection.deliver(self, message, replay)

    def _id(self) -> str:
        return dumps({ch: [p.offset, p.epoch] for ch, p in self.positions.items()})

    async def _write_http(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            await self._chunk(frames.sse_message("close", frames.closed(message.get("code", 1000))), more=False)
            self.ended.set()
            return
        await self._chunk(message["text"])
        self.touch()  # SSE clients cannot answer; a write that went through is the proof

    async def _chunk(self, body: str, more: bool = True) -> None:
        await self._http_send({"type": "http.response.body", "body": body.encode(), "more_body": more})


class ServerSentEventsApp:
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        conn = StreamConnection(send)
        session = ClientSession(conn, "sse", logger)
        try:
            try:
                channels = await self._admit(scope, session, conn)
            except RequestError as exc:
                await _error(send, exc.status, exc.code, exc.message)
                return
            except Refused as exc:
                await _error(send, REFUSAL_STATUS.get(exc.code, 403), exc.code, exc.message)
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
            await self._serve(session, conn, channels, receive)
        finally:
            await session.end()

    async def _admit(self, scope: dict[str, Any], session: ClientSession, conn: StreamConnection) -> list[str]:
        """The stream's channels, once everything about the request checks out: its identity,
        every channel's authorization, the user's connection limit. Raises RequestError/Refused."""
        if scope["method"] not in ("GET", "HEAD"):
            raise RequestError(405, "method_not_allowed", "use GET")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        channels = list(dict.fromkeys(query.get("channel", [])))
        if not channels:
            raise RequestError(400, ErrorCode.BAD_CHANNEL, "give at least one ?channel=")
        session.check_room(len(channels))
        for channel in channels:
            try:
                validate_channel(channel)
            except InvalidChannel as exc:
                raise RequestError(400, ErrorCode.BAD_CHANNEL, f"{channel!r}: {exc}") from None
        session.identify(scope, _connection_token(scope, query))
        sub_tokens = _subscription_tokens(query.get("sub_token", []), channels)
        for channel in channels:
            await session.authorize(channel, sub_tokens.get(channel))
        since = parse_positions(header(scope, b"last-event-id") or query.get("since", [None])[0])
        conn.positions = {ch: pos for ch, pos in since.items() if ch in channels}
        try:
            await session.admit()
        except (RedisError, OSError) as exc:
            logger.warning("sse stream refused, Redis unavailable: %s", exc, extra=session.log_context)
            raise RequestError(503, ErrorCode.UNAVAILABLE, "the service is temporarily unavailable; retry") from None
        return channels

    async def _serve(self, session: ClientSession, conn: StreamConnection, channels: list[str], receive: Any) -> None:
        disconnected = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await session.attach()
            for channel in [] if conn.closed else channels:
                await session.subscribe(channel, conn.positions.get(channel))
            ended = asyncio.ensure_future(conn.ended.wait())
            await asyncio.wait([disconnected, ended], return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
        except (RedisError, OSError) as exc:
            logger.warning("sse stream failed, Redis unavailable: %s", exc, extra=conn.log_context)
            conn.close(CloseCode.TRY_AGAIN_LATER)
            await asyncio.wait([disconnected], timeout=1)
        finally:
            disconnected.cancel()


def _connection_token(scope: dict[str, Any], query: dict[str, list[str]]) -> str | None:
    """`?token=`, else `Authorization: Bearer`."""
    token = query.get("token", [None])[0]
    authorization = header(scope, b"authorization") or ""
    if token is None and authorization.startswith("Bearer "):
        token = authorization.removeprefix("Bearer ").strip()
    return token


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


async def _wait_for_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _error(send: Any, status: int, code: str, message: str) -> None:
    body = dumps({"code": code, "message": message, "details": {}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
