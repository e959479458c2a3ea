"""Error codes and WebSocket close codes: one table, mirrored by clients/js.

Close codes follow Centrifuge's ranges: 4000-4499 are transient (the client reconnects),
4500-4999 are terminal (it does not). 1001/1006/1011/1012/1013 are transient too.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """Stable `code` values of WebSocket error frames."""

    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_OP = "unknown_op"
    BAD_CHANNEL = "bad_channel"
    UNKNOWN_CHANNEL = "unknown_channel"
    FORBIDDEN = "forbidden"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code, not a secret
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
    RATE_LIMITED = "rate_limited"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    TOO_MANY_CONNECTIONS = "too_many_connections"  # sent just before close 4503
    NOT_SUBSCRIBED = "not_subscribed"
    ALREADY_SUBSCRIBED = "already_subscribed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    """WebSocket close codes the server sends."""

    GOING_AWAY = 1001
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    SHUTDOWN = 4000
    TOKEN_EXPIRED = 4001
    TOO_SLOW = 4002
    HEARTBEAT_MISSED = 4003
    INVALID_TOKEN = 4500
    FORBIDDEN = 4501
    PROTOCOL_VIOLATION = 4502
    TOO_MANY_CONNECTIONS = 4503


TRANSIENT_CLOSE_CODES: frozenset[int] = frozenset({1001, 1006, 1011, 1012, 1013, 4000, 4001, 4002, 4003})


def is_terminal(code: int) -> bool:
    """A terminal close means the client must not reconnect on its own."""
    return 4500 <= code <= 4999
