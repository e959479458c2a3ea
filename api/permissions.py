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


def check_key_channels(key: ApiKey, channels: list[str]) -> None:
    """Refuse (403, the refused channels in `details`) channels outside the key's patterns."""
    refused = key.disallowed(channels)
    if refused:
        error = exceptions.PermissionDenied(f"this API key may not use {refused[0]!r}")
        error.notifier_details = {"channels": refused}  # type: ignore[attr-defined]
        raise error
