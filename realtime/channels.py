"""Channel names, their namespaces' policies, and the one mapping channel -> group name.

A channel is `name` or `namespace:name`. Channels' group names are more restricted (ASCII
letters, digits, `-_.`, under 100 characters), so `group_of()` escapes the other characters
injectively, and hashes names whose escaped form would be too long.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .conf import notifier_settings
from .redis import cluster_mode, tag

MAX_CHANNEL_LENGTH = 128
CHANNEL_RE = re.compile(r"[A-Za-z0-9_.\-@=]+(:[A-Za-z0-9_.\-:@=]+)?")
# `_` starts every escape, so escaped names never collide with each other.
_GROUP_ESCAPES = {"_": "_u", ":": "_c", "@": "_a", "=": "_e"}
_GROUP_ESCAPE_RE = re.compile("[_:@=]")
_GROUP_MAX = 99  # Channels requires len(name) < 100


class InvalidChannel(ValueError):
    """A channel name that breaks the documented rules."""


@dataclass(frozen=True)
class NamespacePolicy:
    """What a namespace allows. Configured in NOTIFIER["NAMESPACES"]."""

    # Any connected client may subscribe (no authorization needed).
    public: bool = True
    # `user:<id>` style: only the user whose id is the channel's name may subscribe.
    personal: bool = False
    # Subscribers may publish with the `publish` op.
    client_publish: bool = False
    # Who is subscribed is tracked (GET /api/channels/<channel>/presence).
    presence: bool = False
    # Subscribers receive {"type": "join"/"leave"} frames (needs presence).
    presence_events: bool = False
    history_size: int | None = None  # None: NOTIFIER["HISTORY_SIZE"]
    history_ttl_secs: int | None = None  # None: NOTIFIER["HISTORY_TTL_SECS"]


DEFAULT_NAMESPACES: dict[str, NamespacePolicy] = {
    "": NamespacePolicy(),
    "private": NamespacePolicy(public=False),
    "user": NamespacePolicy(public=False, personal=True),
    # Chat rooms (the Channels tutorial's classic). Client publishing is off until settings turn
    # it on (the embedded trial mode does, for /demo/chat/).
    "chat": NamespacePolicy(presence=True, presence_events=True, history_size=100),
}


def validate_channel(channel: Any) -> str:
    """Return `channel` if it is a well-formed name, else raise InvalidChannel."""
    if not isinstance(channel, str):
        raise InvalidChannel("channel must be a string")
    if not channel:
        raise InvalidChannel("channel must not be empty")
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise InvalidChannel(f"channel is longer than {MAX_CHANNEL_LENGTH} characters")
    if not CHANNEL_RE.fullmatch(channel):  # not match(): "$" would let a trailing newline in
        raise InvalidChannel(
            "channel may contain only ASCII letters, digits and _ . - @ = , with an optional 'namespace:' prefix"
        )
    return channel


def namespace_of(channel: str) -> str:
    return channel.split(":", 1)[0] if ":" in channel else ""


def name_in_namespace(channel: str) -> str:
    return channel.split(":", 1)[1] if ":" in channel else channel


_merged: tuple[object, dict[str, NamespacePolicy]] | None = None


def policies() -> dict[str, NamespacePolicy]:
    """The default policies with NOTIFIER["NAMESPACES"] applied (merged once per settings object)."""
    global _merged
    configured = notifier_settings.NAMESPACES
    if _merged is None or _merged[0] is not configured:
        _merged = (configured, _merge(configured))
    return _merged[1]


def _merge(configured: dict[str, dict[str, Any]]) -> dict[str, NamespacePolicy]:
    merged = dict(DEFAULT_NAMESPACES)
    for namespace, overrides in configured.items():
        base = merged.get(namespace, NamespacePolicy())
        unknown = set(overrides) - set(NamespacePolicy.__dataclass_fields__)
        if unknown:
            raise ImproperlyConfigured(f"NOTIFIER['NAMESPACES'][{namespace!r}]: unknown keys {sorted(unknown)}")
        merged[namespace] = replace(base, **overrides)
    for namespace, policy in merged.items():
        history_limits(f"{namespace}:", policy.history_size, policy.history_ttl_secs)  # raises when invalid
    return merged


def history_limits(channel: str, size: int | None, ttl_secs: int | None) -> tuple[int, int]:
    """A channel's history size and TTL: its namespace's values, the NOTIFIER defaults where
    those are None. A size of 0 keeps no events (offsets and epochs still count, so recovery
    says `recovered: false`); a negative size, or a TTL under one second (which would drop
    history at once, a new epoch every publish), raises ImproperlyConfigured."""
    size = notifier_settings.HISTORY_SIZE if size is None else size
    ttl_secs = notifier_settings.HISTORY_TTL_SECS if ttl_secs is None else ttl_secs
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImproperlyConfigured(f"{channel!r}: history size must be an integer >= 0, not {size!r}")
    if isinstance(ttl_secs, bool) or not isinstance(ttl_secs, int) or ttl_secs < 1:
        raise ImproperlyConfigured(f"{channel!r}: history TTL must be an integer >= 1 second, not {ttl_secs!r}")
    return size, ttl_secs


def policy_of(channel: str) -> NamespacePolicy | None:
    """The policy of the channel's namespace, or None when the namespace is not configured."""
    return policies().get(namespace_of(channel))


def group_of(channel: str) -> str:
    """The Channels group name of a (validated) channel; injective."""
    escaped = _GROUP_ESCAPE_RE.sub(lambda m: _GROUP_ESCAPES[m.group(0)], channel)
    group = f"ch.{escaped}"
    if len(group) <= _GROUP_MAX:
        return group
    return "chh." + hashlib.sha256(channel.encode()).hexdigest()


def in_keys(channel: str) -> str:
    """The channel as its Redis keys name it: itself on one Redis; in cluster mode its group
    inside a hash tag, the tag of its sharded pub/sub channel too (realtime/broker.py), so its
    history, presence and messages live on one node and a script can do all of it at once."""
    return tag(group_of(channel)) if cluster_mode() else channel


def personal_channel(user_id: str) -> str:
    return f"user:{user_id}"
