"""`Authorization: Bearer <api key>` for the publishing API."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication
from rest_framework.request import Request

from .exceptions import InvalidApiKey
from .models import ApiKey, hash_key


class Caller(AnonymousUser):
    """An authenticated caller that is not a Django user (DRF's `request.user`)."""

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True


class Publisher(Caller):
    """A backend: an API key."""

    def __init__(self, key: ApiKey) -> None:
        self.key = key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Publisher, ApiKey] | None:
        key = bearer_key(authentication.get_authorization_header(request).decode("latin-1"))
        if key is None:
            return None
        # Looked up on every request, so a revoked key stops working at once.
        record = ApiKey.objects.active().filter(key_hash=hash_key(key)).first()
        if record is None:
            raise InvalidApiKey("unknown or revoked API key")
        return Publisher(record), record

    def authenticate_header(self, request: Request) -> str:
        return self.keyword

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "ApiKeyAuthentication()"


def bearer_key(header: str) -> str | None:
    """The API key of an `Authorization` header; None when there is none (the one parser of it:
    the DRF views and the event-loop publish route, api/fast.py, both use this)."""
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    if scheme != "Bearer" or not key.strip():
        raise InvalidApiKey("use 'Authorization: Bearer <api key>'")
    return key.strip()
