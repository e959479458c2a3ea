"""API keys: the credential backend services publish with. Only a hash is stored."""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
from collections.abc import Iterable

from django.db import models
from django.utils import timezone

KEY_PREFIX = "nk_"
# publish events; read history/presence; mint tokens; act on a user's inbox (not by default)
SCOPES = ("publish", "read", "tokens", "users", "webhooks")
DEFAULT_SCOPES = ("publish", "read", "tokens")
ALL_CHANNELS = ["*"]


def default_scopes() -> list[str]:
    return list(DEFAULT_SCOPES)


def default_channels() -> list[str]:
    return list(ALL_CHANNELS)


def hash_key(key: str) -> str:
    # Keys are 256-bit random strings, so a fast hash is enough: no dictionary to attack.
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    scopes = models.JSONField(default=default_scopes, help_text=f"Any of {', '.join(SCOPES)}.")
    channels = models.JSONField(
        default=default_channels,
        help_text='Channel patterns this key may use (fnmatch, e.g. "orders.*", "user:*"); ["*"] for all.',
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def allows_channel(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.channels)

    def disallowed(self, channels: Iterable[str]) -> list[str]:
        """The channels this key may not use."""
        return [channel for channel in channels if not self.allows_channel(channel)]

    @classmethod
    def create_key(
        cls, name: str, scopes: Iterable[str] | None = None, channels: Iterable[str] | None = None
    ) -> tuple[ApiKey, str]:
        """Create a key; returns the record and the plaintext key (shown once, never stored)."""
        scopes = list(scopes) if scopes is not None else default_scopes()
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}; choose from {', '.join(SCOPES)}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = cls.objects.create(
            name=name,
            prefix=key[:10],
            key_hash=hash_key(key),
            scopes=scopes,
            channels=list(channels) if channels is not None else default_channels(),
        )
        return record, key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
