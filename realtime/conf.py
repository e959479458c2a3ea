"""The NOTIFIER settings block, read through one accessor (DRF's `api_settings` shape).

Unknown keys raise, so a typo is found at the first read rather than silently ignored, and the
cache is reset on `setting_changed` so `override_settings` works in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    "REDIS_URL": "",
    "METRICS_TOKEN": "",
    "MAX_PAYLOAD_BYTES": 64 * 1024,
    "MAX_FRAME_BYTES": 64 * 1024,
    "MAX_CHANNELS_PER_PUBLISH": 100,
    "MAX_BATCH_EVENTS": 100,
    "HEARTBEAT_SECS": 25,
    "ALLOWED_ORIGINS": [],
    "HISTORY_SIZE": 1000,
    "HISTORY_TTL_SECS": 24 * 3600,
    "IDEMPOTENCY_WINDOW_SECS": 300,
    "JWT_SECRET": "",
    "ALLOW_ANONYMOUS": True,
    # Seconds a connection may stay open after its token expired, waiting for `op: refresh`.
    "TOKEN_GRACE_SECS": 30,
    # Seconds an unauthenticated connection may wait before sending `op: auth` when anonymous
    # connections are not allowed.
    "AUTH_TIMEOUT_SECS": 10,
    # A subclass of realtime.authorization.ChannelAuthorizer, as a dotted path.
    "AUTHORIZER": "realtime.authorization.ChannelAuthorizer",
    "MAX_SUBSCRIPTIONS_PER_CONNECTION": 128,
    "MAX_CONNECTIONS_PER_USER": 64,
    "CLIENT_FRAMES_PER_SEC": 50,
    "CLIENT_PUBLISH_PER_SEC": 5,
    "PUBLISH_RATE_PER_KEY": "1000/s",
    "PRESENCE_TTL_SECS": 30,
    "PRESENCE_LEAVE_DELAY_SECS": 3,
    "REDIS_PREFIX": "notifier",
    "REDIS_MAX_CONNECTIONS": 50,
    "REDIS_CONNECT_TIMEOUT_SECS": 2,
    "REDIS_SOCKET_TIMEOUT_SECS": 5,
    # Acknowledge a publish only once this many Redis replicas have it (WAIT); 0: once the
    # master has it. A publish whose replicas do not answer within the timeout gets 503
    # not_replicated (stored on the master, delivered, but not acknowledged).
    "REPLICA_ACKS": 0,
    "REPLICA_ACK_TIMEOUT_MS": 500,
    # Namespace (the part of a channel name before ":") -> policy overrides; see
    # realtime.channels.NamespacePolicy. "" is the namespace of names without ":".
    "NAMESPACES": {},
}


class NotifierSettings:
    """Attribute access to NOTIFIER settings with defaults; unknown names raise."""

    def __init__(self) -> None:
        self._read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        """The first read of a setting; it is then kept as an attribute (the hot path reads
        some on every event), until `reload`."""
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Unknown NOTIFIER setting: {name!r}")
        user = getattr(settings, "NOTIFIER", {})
        unknown = set(user) - set(DEFAULTS)
        if unknown:
            raise AttributeError(f"Unknown NOTIFIER settings: {sorted(unknown)}")
        value = user.get(name, DEFAULTS[name])
        setattr(self, name, value)
        self._read.add(name)
        return value

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: in-process layer and history."""
        return not self.REDIS_URL

    def reload(self) -> None:
        for name in self._read:
            delattr(self, name)
        self._read.clear()


notifier_settings = NotifierSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "NOTIFIER":
        notifier_settings.reload()


setting_changed.connect(_reload)
