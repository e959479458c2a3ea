"""What an API key may do: its scopes (publish, read, tokens) and its channel patterns."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .authentication import Publisher
from .models import ApiKey


class HasScope(BasePermission):
    """The view's `required_scope` must be among the authenticated key's scopes."""

    message = "this API key does not have the scope this endpoint needs"
    code = "forbidden"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not isinstance(user, Publisher):
            return False
        self.message = f"this API key lacks the {view.required_scope!r} scope"
        return user.key.has_scope(view.required_scope)


GLOB_CHARACTERS = frozenset("*?[")  # fnmatch's special characters; channel names never contain them


def check_key_channels(key: ApiKey, channels: list[str]) -> None:
    """Refuse (403, the refused channels in `details`) channels outside the key's patterns."""
    _refuse(key.disallowed(channels))


def key_may_grant(key: ApiKey, requested: str) -> bool:
    """Whether a token minted with `key` may grant `requested`, a channel name or a pattern.

    A name must match one of the key's patterns. A pattern must be one of the key's patterns
    exactly (or the key must have every channel, `*`): matching a pattern against a pattern
    says nothing about what it grants (`orders.*` matches the key pattern `orders.?`).
    """
    if GLOB_CHARACTERS.isdisjoint(requested):
        return key.allows_channel(requested)
    return requested in key.channels or "*" in key.channels


def check_key_grants(key: ApiKey, channels: list[str]) -> None:
    """Refuse (403) a token that would grant channels or patterns beyond the key's patterns."""
    _refuse(list(dict.fromkeys(c for c in channels if not key_may_grant(key, c))))


def _refuse(refused: list[str]) -> None:
    if refused:
        error = exceptions.PermissionDenied(f"this API key may not use {refused[0]!r}")
        error.notifier_details = {"channels": refused}  # type: ignore[attr-defined]
        raise error
