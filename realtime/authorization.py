"""Who may subscribe to and publish on a channel (DESIGN §3), as a class you can subclass.

Set NOTIFIER["AUTHORIZER"] to a subclass's dotted path and override `has_private_access`
(sync, may use the ORM, e.g. Django permissions) to grant private channels your own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from channels.db import database_sync_to_async
from django.utils.module_loading import import_string

from .channels import name_in_namespace, policy_of
from .codes import ErrorCode
from .conf import notifier_settings
from .tokens import ConnectionClaims, InvalidToken, TokenExpired, decode_subscription_token


@dataclass
class Identity:
    """Who is on the other end of a connection."""

    user: str | None = None  # None: anonymous
    claims: ConnectionClaims | None = None  # from a connection token
    django_user: Any = None  # from the Django session, for permission hooks

    @property
    def expires_at(self) -> float | None:
        return self.claims.expires_at if self.claims else None


@dataclass(frozen=True)
class Refusal:
    code: ErrorCode
    message: str


class ChannelAuthorizer:
    async def can_subscribe(self, identity: Identity, channel: str, token: str | None = None) -> Refusal | None:
        """None if `identity` may subscribe to `channel`, else why not."""
        policy = policy_of(channel)
        if policy is None:
            return Refusal(ErrorCode.UNKNOWN_CHANNEL, f"unknown namespace in {channel!r}")
        if identity.user is None and not notifier_settings.ALLOW_ANONYMOUS:
            return Refusal(ErrorCode.FORBIDDEN, "authenticate first")
        if policy.personal:
            if identity.user is not None and identity.user == name_in_namespace(channel):
                return None
            return Refusal(ErrorCode.FORBIDDEN, f"{channel!r} belongs to another user")
        if policy.public:
            return None
        if identity.claims is not None and identity.claims.grants(channel):
            return None
        if token is not None:
            return self._check_subscription_token(identity, channel, token)
        if await database_sync_to_async(self.has_private_access)(identity, channel):
            return None
        return Refusal(ErrorCode.FORBIDDEN, f"not allowed to subscribe to {channel!r}")

    async def can_publish(self, identity: Identity, channel: str) -> Refusal | None:
        """Client publishing: the namespace must allow it, and the client must be allowed to listen."""
        policy = policy_of(channel)
        if policy is not None and not policy.client_publish:
            return Refusal(ErrorCode.FORBIDDEN, f"clients may not publish to {channel!r}")
        return await self.can_subscribe(identity, channel)

    def subscription_token_grants(self, identity: Identity, channel: str, token: str) -> bool:
        """Whether `token` is a valid subscription token for this user and channel.

        A subscription it granted survives a `refresh`, which keeps the user."""
        return self._check_subscription_token(identity, channel, token) is None

    def has_private_access(self, identity: Identity, channel: str) -> bool:
        """Override to grant private channels from your own data. Runs in a thread; may use the ORM."""
        return False

    @staticmethod
    def _check_subscription_token(identity: Identity, channel: str, token: str) -> Refusal | None:
        try:
            claims = decode_subscription_token(token)
        except TokenExpired:
            return Refusal(ErrorCode.TOKEN_EXPIRED, "subscription token expired")
        except InvalidToken as exc:
            return Refusal(ErrorCode.INVALID_TOKEN, str(exc))
        if claims.channel != channel or claims.user != (identity.user or ""):
            return Refusal(ErrorCode.FORBIDDEN, "the subscription token is for another channel or user")
        return None


@cache
def _authorizer_class(path: str) -> type[ChannelAuthorizer]:
    cls: type[ChannelAuthorizer] = import_string(path)
    return cls


def get_authorizer() -> ChannelAuthorizer:
    return _authorizer_class(notifier_settings.AUTHORIZER)()
