"""The WebSocket protocol's client frames, parsed into small frozen dataclasses.

Pure functions: a frame either becomes a typed request or raises ProtocolError with a stable
code, so the consumer stays thin and every rule is testable without a socket.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .channels import InvalidChannel, validate_channel
from .codes import ErrorCode
from .history import Position

PROTOCOL_VERSION = 1
MAX_REF_LENGTH = 64


class ProtocolError(Exception):
    def __init__(self, code: ErrorCode, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True)
class Subscribe:
    channel: str
    since: Position | None = None
    token: str | None = None
    ref: Any = None


@dataclass(frozen=True)
class Unsubscribe:
    channel: str
    ref: Any = None


@dataclass(frozen=True)
class Ping:
    ref: Any = None


@dataclass(frozen=True)
class Pong:
    ref: Any = None


@dataclass(frozen=True)
class Publish:
    channel: str
    event: str
    data: Any
    ref: Any = None


@dataclass(frozen=True)
class Auth:
    token: str
    ref: Any = None


@dataclass(frozen=True)
class Refresh:
    token: str
    ref: Any = None


ClientFrame = Subscribe | Unsubscribe | Ping | Pong | Publish | Auth | Refresh


def parse_frame(text: str | None, bytes_data: bytes | None, max_bytes: int) -> ClientFrame:
    """Parse one client frame; raise ProtocolError for anything outside the protocol."""
    if text is None:
        raise ProtocolError(ErrorCode.BAD_FRAME, "binary frames are not supported; send JSON text")
    if len(text) > max_bytes or len(text.encode()) > max_bytes:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame is larger than {max_bytes} bytes")
    try:
        body = json.loads(text)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None
    except RecursionError:  # `[[[[…` a few thousand deep
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is nested too deeply") from None
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame must be a JSON object")
    ref = _ref(body)
    op = body.get("op")
    parser = _PARSERS.get(op) if isinstance(op, str) else None
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", ref)
    try:
        return parser(body, ref)
    except ProtocolError as exc:
        exc.ref = ref
        raise


def _ref(body: dict[str, Any]) -> Any:
    ref = body.get("ref")
    if ref is None:
        return None
    if isinstance(ref, bool) or not isinstance(ref, (int, str)) or len(str(ref)) > MAX_REF_LENGTH:
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"ref must be a string or integer of at most {MAX_REF_LENGTH} characters"
        )
    return ref


def _channel(body: dict[str, Any]) -> str:
    try:
        return validate_channel(body.get("channel"))
    except InvalidChannel as exc:
        raise ProtocolError(ErrorCode.BAD_CHANNEL, str(exc)) from None


def _optional_token(body: dict[str, Any]) -> str | None:
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "token must be a string")
    return token


def _required_token(body: dict[str, Any]) -> str:
    token = _optional_token(body)
    if not token:
        raise ProtocolError(ErrorCode.BAD_FRAME, "token is required")
    return token


def _since(body: dict[str, Any]) -> Position | None:
    since = body.get("since")
    if since is None:
        return None
    if not isinstance(since, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "since must be an object {offset, epoch}")
    offset, epoch = since.get("offset"), since.get("epoch", "")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ProtocolError(ErrorCode.BAD_FRAME, "since.offset must be a non-negative integer")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise ProtocolError(ErrorCode.BAD_FRAME, "since.epoch must be a string")
    return Position(offset, epoch)


def _subscribe(body: dict[str, Any], ref: Any) -> Subscribe:
    return Subscribe(_channel(body), _since(body), _optional_token(body), ref)


def _unsubscribe(body: dict[str, Any], ref: Any) -> Unsubscribe:
    return Unsubscribe(_channel(body), ref)


def _publish(body: dict[str, Any], ref: Any) -> Publish:
    event = body.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError(ErrorCode.BAD_FRAME, "event must be a non-empty string")
    return Publish(_channel(body), event, body.get("data"), ref)


_PARSERS: dict[str, Callable[[dict[str, Any], Any], ClientFrame]] = {
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "ping": lambda body, ref: Ping(ref),
    "pong": lambda body, ref: Pong(ref),
    "publish": _publish,
    "auth": lambda body, ref: Auth(_required_token(body), ref),
    "refresh": lambda body, ref: Refresh(_required_token(body), ref),
}
