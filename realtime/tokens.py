"""Connection and subscription tokens: JWT HS256, so any backend can mint them.

A connection token carries `sub` (the user id), `exp` and optionally `channels` (private
channels, or fnmatch patterns, it grants). A subscription token grants one private channel to
one user: `sub`, `channel`, `exp`. Only HS256 is accepted, so `alg: none` and key-confusion
tokens are refused.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from .conf import notifier_settings

ALGORITHM = "HS256"
LEEWAY_SECS = 5  # clock skew between the minting backend and us
MAX_TOKEN_LENGTH = 8192


class InvalidToken(Exception):
    """Forged, malformed or unusable: the client must not retry with it (close 4500)."""


class TokenExpired(Exception):
    """Well-formed but expired: fetch a new one (close 4001)."""


@dataclass(frozen=True)
class ConnectionClaims:
    user: str
    expires_at: float
    channels: tuple[str, ...] = ()

    def grants(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.channels)


@dataclass(frozen=True)
class SubscriptionClaims:
    user: str
    channel: str
    expires_at: float


def _secret() -> str:
    secret: str = notifier_settings.JWT_SECRET
    if not secret:
        raise InvalidToken("token authentication is not configured (NOTIFIER_JWT_SECRET)")
    return secret


def _encode(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, _secret(), algorithm=ALGORITHM)


def mint_connection_token(user: str, channels: Sequence[str] | None = None, expires_in: int = 3600) -> tuple[str, int]:
    """A connection token for `user`; returns (token, expires_at as a Unix time)."""
    expires_at = int(time.time()) + expires_in
    claims: dict[str, Any] = {"sub": str(user), "exp": expires_at}
    if channels:
        claims["channels"] = list(channels)
    return _encode(claims), expires_at


def mint_subscription_token(user: str, channel: str, expires_in: int = 3600) -> tuple[str, int]:
    """A token that lets `user` subscribe to one private `channel`."""
    expires_at = int(time.time()) + expires_in
    return _encode({"sub": str(user), "channel": channel, "exp": expires_at}), expires_at


def _decode(token: Any) -> dict[str, Any]:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, _secret(), algorithms=[ALGORITHM], leeway=LEEWAY_SECS, options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired("token expired") from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidToken("invalid token: sub must be a non-empty string")
    return claims


def decode_connection_token(token: Any) -> ConnectionClaims:
    claims = _decode(token)
    if "channel" in claims:
        raise InvalidToken("a subscription token cannot authenticate a connection")
    channels = claims.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise InvalidToken("invalid token: channels must be a list of strings")
    return ConnectionClaims(claims["sub"], float(claims["exp"]), tuple(channels))


def decode_subscription_token(token: Any) -> SubscriptionClaims:
    claims = _decode(token)
    if not isinstance(claims.get("channel"), str):
        raise InvalidToken("a subscription token needs a channel claim")
    return SubscriptionClaims(claims["sub"], claims["channel"], float(claims["exp"]))
