"""The NOTIFIER settings block, read through one accessor (DRF's `api_settings` shape).

Every default is written here, once. notifier/settings.py only maps environment variables
(`NOTIFIER_<NAME>`, parsed by the type of the default: `environment_overrides`) onto them.
Unknown keys raise, so a typo is found at the first read rather than silently ignored, and the
cache is reset on `setting_changed` so `override_settings` works in tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    "REDIS_URL": "",
    # `/metrics` answers only `Authorization: Bearer <this>` when set.
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
    # Connection tokens are signed with this; non-Python backends need it to mint tokens.
    # Unset, notifier/settings.py derives one from DJANGO_SECRET_KEY (fine for Python-only setups).
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
    # The server process's cyclic-GC thresholds (gc.set_threshold), "python" for Python's (700,10,10).
    # With Python's, a loaded process promoted each request's objects to the oldest generation
    # within milliseconds, and a full collection of thousands of connections' objects then held
    # the event loop for 0.2-0.5 s every few seconds (docs/benchmarks.md, issue 17).
    "GC_THRESHOLDS": "50000,20,100",
    # Seconds a server process stays in a channel's group after its last subscriber there left,
    # so that a reload or a reconnect storm costs no SUBSCRIBE/UNSUBSCRIBE (0: leave at once).
    "CHANNEL_LINGER_SECS": 15.0,
    "PRESENCE_TTL_SECS": 30,
    "PRESENCE_LEAVE_DELAY_SECS": 3,
    # A user's last connection gone this long is `presence.offline` (webhooks): a reload is not.
    "PRESENCE_DEBOUNCE_SECS": 10,
    "REDIS_PREFIX": "notifier",
    "REDIS_MAX_CONNECTIONS": 50,
    "REDIS_CONNECT_TIMEOUT_SECS": 2,
    "REDIS_SOCKET_TIMEOUT_SECS": 5,
    # Acknowledge a publish only once this many Redis replicas have it (WAIT); 0: once the
    # master has it. A publish whose replicas do not answer within the timeout gets 503
    # not_replicated (stored on the master, delivered, but not acknowledged).
    "REPLICA_ACKS": 0,
    "REPLICA_ACK_TIMEOUT_MS": 500,
    # Stored notifications per user (the oldest read or archived go first) and their age.
    "INBOX_MAX_PER_USER": 1000,
    "INBOX_TTL_DAYS": 90,
    # Web Push (DESIGN §11): the VAPID private key (base64url of the 32-byte P-256 scalar, as
    # `manage.py generate_vapid_keys` prints it) and the contact push services may use
    # (`mailto:` or `https:`). Unset key: no Web Push (the embedded mode makes one per checkout).
    "VAPID_PRIVATE_KEY": "",
    "VAPID_SUBJECT": "",
    # Outbound requests (pushes, webhooks) may go to http:// and to loopback or private
    # addresses: for tests and intranets only.
    "OUTBOUND_ALLOW_PRIVATE": False,
    "OUTBOUND_TIMEOUT_SECS": 5,
    # How often Celery beat queues again the pushes and webhooks whose task was lost (a killed
    # worker); one is taken for lost once it is twice this many seconds past due.
    "SWEEP_SECS": 15,
    # Scheduled events and digests (DESIGN §12): how far ahead one may be scheduled, how often
    # Celery beat looks for due ones, and how long a dispatcher holds the ones it took (one
    # killed holding them: another takes them once this has passed).
    "MAX_SCHEDULE_DAYS": 30,
    "DISPATCH_SECS": 0.5,
    "DISPATCH_LEASE_SECS": 30,
    # The embedded mode has no Celery beat: its server process dispatches (off: nothing does).
    "DISPATCH_IN_SERVER": True,
    # Namespace (the part of a channel name before ":") -> policy overrides; see
    # realtime.channels.NamespacePolicy. "" is the namespace of names without ":".
    # NOTIFIER_NAMESPACES: JSON {"namespace": {"public": bool, "client_publish": bool, ...}}.
    "NAMESPACES": {},
}


# Not read from NOTIFIER_<NAME>: REDIS_URL comes from REDIS_URL; notifier/settings.py builds
# JWT_SECRET (derived from DJANGO_SECRET_KEY when unset) and NAMESPACES (JSON, with the embedded
# mode's chat rooms); MAX_BATCH_EVENTS is part of the HTTP contract (DESIGN §4).
NOT_FROM_ENVIRONMENT = frozenset({"REDIS_URL", "JWT_SECRET", "NAMESPACES", "MAX_BATCH_EVENTS"})
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_env(key: str, raw: str, like: Any) -> Any:
    """The environment variable `key`'s text as a value of the type of `like` (bool, int, float,
    list of comma-separated strings, JSON object, or str); ImproperlyConfigured naming it if not."""
    if isinstance(like, bool):
        value = raw.strip().lower()
        if value in TRUE | FALSE:
            return value in TRUE
        raise ImproperlyConfigured(f"{key}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")
    if isinstance(like, int):
        try:
            return int(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{key}={raw!r} is not an integer") from None
    if isinstance(like, float):
        try:
            return float(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{key}={raw!r} is not a number") from None
    if isinstance(like, list):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(like, dict):
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{key}={raw!r} is not JSON") from None
        if not isinstance(parsed, dict):
            raise ImproperlyConfigured(f"{key} must be a JSON object")
        return parsed
    return raw


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The NOTIFIER settings that `NOTIFIER_<NAME>` variables set (an empty one sets nothing)."""
    overrides = {}
    for name, default in DEFAULTS.items():
        raw = environ.get(f"NOTIFIER_{name}", "")
        if name not in NOT_FROM_ENVIRONMENT and raw.strip():
            overrides[name] = parse_env(f"NOTIFIER_{name}", raw, default)
    return overrides


def check_values(values: Mapping[str, Any]) -> None:
    """Refuse settings that cannot work, when the process starts."""
    if values["REPLICA_ACKS"] < 0 or values["REPLICA_ACK_TIMEOUT_MS"] < 1:  # WAIT with 0 ms blocks forever
        raise ImproperlyConfigured("NOTIFIER_REPLICA_ACKS must be >= 0 and NOTIFIER_REPLICA_ACK_TIMEOUT_MS >= 1")
    if values["REPLICA_ACKS"] and values["REPLICA_ACK_TIMEOUT_MS"] >= 1000 * values["REDIS_SOCKET_TIMEOUT_SECS"]:
        raise ImproperlyConfigured(  # the socket would time out first: stored events would read as not published
            "NOTIFIER_REPLICA_ACK_TIMEOUT_MS must be below NOTIFIER_REDIS_SOCKET_TIMEOUT_SECS (in ms)"
        )
    gc_thresholds(values["GC_THRESHOLDS"])
    if values["CHANNEL_LINGER_SECS"] < 0:
        raise ImproperlyConfigured("NOTIFIER_CHANNEL_LINGER_SECS must be >= 0")
    if values["DISPATCH_SECS"] <= 0 or values["DISPATCH_LEASE_SECS"] <= 0 or values["MAX_SCHEDULE_DAYS"] <= 0:
        raise ImproperlyConfigured(
            "NOTIFIER_DISPATCH_SECS, NOTIFIER_DISPATCH_LEASE_SECS and NOTIFIER_MAX_SCHEDULE_DAYS must be > 0"
        )


def gc_thresholds(text: str) -> tuple[int, ...]:
    """NOTIFIER_GC_THRESHOLDS as gc.set_threshold's arguments; () for Python's own."""
    try:
        values = () if text.strip().lower() in ("", "python") else tuple(int(part) for part in text.split(","))
    except ValueError:
        values = (-1,)
    if len(values) > 3 or any(value < 1 for value in values):
        raise ImproperlyConfigured(f"NOTIFIER_GC_THRESHOLDS={text!r}: up to three integers >= 1, or python")
    return values


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
