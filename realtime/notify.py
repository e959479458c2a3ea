"""The notify body contract, shared by HTTP (api/: POST /api/notify and /batch, and their
OpenAPI schema) and Celery (worker/: the `notifier.notify` task's kwargs): validation, limits,
targets and the idempotency key, each rule written once.

DRF serializers state it (they word the errors and describe the schema); `quick_notify_attrs`
is the fast path for ordinary bodies, accepting exactly what the serializer accepts.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .channels import InvalidChannel, personal_channel, policy_of, validate_channel
from .conf import notifier_settings
from .publish import MAX_EVENT_NAME_LENGTH, PublishRequest, Targets
from .push import MAX_TTL_SECS, URGENCIES, WHEN, PushSpec
from .scheduling import DEFAULT_DIGEST_MAX, MAX_DIGEST_MAX, MAX_DIGEST_WINDOW_SECS, Digest, Later

USER_ID_RE = re.compile(r"[A-Za-z0-9_.\-@=]{1,64}")
CATEGORY_RE = re.compile(r"[a-z0-9_.\-]{1,64}")
MAX_IDEMPOTENCY_KEY_LENGTH = 128


class ChannelField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string", code="invalid")
        try:
            channel = validate_channel(data)
        except InvalidChannel as exc:
            raise serializers.ValidationError(str(exc), code="bad_channel") from None
        if policy_of(channel) is None:
            raise serializers.ValidationError(f"unknown namespace in {channel!r}", code="unknown_channel")
        return channel


class UserIdField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, int) and not isinstance(data, bool):
            data = str(data)
        if not isinstance(data, str) or not USER_ID_RE.fullmatch(data):
            raise serializers.ValidationError(
                "must be a user id: 1-64 ASCII letters, digits or _ . - @ =", code="invalid"
            )
        return data


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of coercing them."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string", code="invalid")
        return str(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    """true or false, nothing DRF would coerce ("yes", 1)."""

    def to_internal_value(self, data: Any) -> bool:
        if type(data) is not bool:
            raise serializers.ValidationError("must be true or false", code="invalid")
        return data


class CategoryField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str) or not CATEGORY_RE.fullmatch(data):
            raise serializers.ValidationError("must be a category: 1-64 of a-z 0-9 _ . -", code="invalid")
        return data


class StrictObjectSerializer(serializers.Serializer):
    """Refuses a body that is not a JSON object, or that has fields we do not know (typos)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["body must be a JSON object"]}, code="invalid")
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in unknown}, code="invalid")
        return super().to_internal_value(data)


class PushSerializer(StrictObjectSerializer):
    """`push`: the Web Push an offline (or every) targeted user's browsers get (DESIGN §11)."""

    title = StrictCharField(max_length=200)
    body = StrictCharField(max_length=1000, allow_blank=True)
    url = StrictCharField(required=False, max_length=1000)
    icon = StrictCharField(required=False, max_length=1000)
    tag = StrictCharField(required=False, max_length=64)
    ttl = serializers.IntegerField(required=False, min_value=0, max_value=MAX_TTL_SECS)
    urgency = serializers.ChoiceField(choices=URGENCIES, required=False)
    when = serializers.ChoiceField(choices=WHEN, required=False)

    def to_internal_value(self, data: Any) -> PushSpec:
        attrs = super().to_internal_value(data)
        if "ttl" in attrs and type(data.get("ttl")) is not int:
            raise serializers.ValidationError({"ttl": ["must be an integer number of seconds"]})
        return PushSpec(**attrs)


@extend_schema_field(OpenApiTypes.DATETIME)
class DeliverAtField(serializers.Field):
    """An RFC 3339 date and time with its zone ("Z" or an offset)."""

    def to_internal_value(self, data: Any) -> datetime:
        try:
            moment = datetime.fromisoformat(data) if isinstance(data, str) and "T" in data.upper() else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise serializers.ValidationError(
                "must be an RFC 3339 date and time with a zone, e.g. 2026-12-24T09:00:00Z", code="invalid"
            )
        return moment

    def to_representation(self, value: datetime) -> str:
        return value.isoformat()


class StrictIntegerField(serializers.IntegerField):
    """An integer, not a string or a float DRF would coerce."""

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            raise serializers.ValidationError("must be an integer", code="invalid")
        return int(super().to_internal_value(data))


class DigestSerializer(StrictObjectSerializer):
    """`digest`: collect the publishes with this key and target for `window` seconds into one
    event (DESIGN §12)."""

    key = StrictCharField(max_length=128)
    window = StrictIntegerField(min_value=1, max_value=MAX_DIGEST_WINDOW_SECS)
    max = StrictIntegerField(required=False, min_value=1, max_value=MAX_DIGEST_MAX, default=DEFAULT_DIGEST_MAX)

    def to_internal_value(self, data: Any) -> Digest:
        return Digest(**super().to_internal_value(data))


class NotifyRequestSerializer(StrictObjectSerializer):
    """One event: where it goes (channel/channels/user/users), its name and data."""

    channel = ChannelField(required=False)
    channels = serializers.ListField(child=ChannelField(), required=False, allow_empty=False)
    user = UserIdField(required=False)
    users = serializers.ListField(child=UserIdField(), required=False, allow_empty=False)
    event = StrictCharField(max_length=MAX_EVENT_NAME_LENGTH)
    data = serializers.JSONField(required=False, allow_null=True, default=None)  # type: ignore[assignment]
    idempotency_key = StrictCharField(required=False, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    inbox = StrictBooleanField(required=False, default=False)
    category = CategoryField(required=False)
    push = PushSerializer(required=False)
    deliver_at = DeliverAtField(required=False)
    delay = StrictIntegerField(required=False, min_value=1)
    digest = DigestSerializer(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        later = _later(attrs)
        if later is not None:
            attrs["later"] = later
        targets: list[str] = []
        if "channel" in attrs:
            targets.append(attrs["channel"])
        targets.extend(attrs.get("channels", []))
        if "user" in attrs:
            targets.append(personal_channel(attrs["user"]))
        targets.extend(personal_channel(user) for user in attrs.get("users", []))
        if not targets:
            raise serializers.ValidationError("one of channel, channels, user or users is required")
        targets = list(dict.fromkeys(targets))
        limit = notifier_settings.MAX_CHANNELS_PER_PUBLISH
        if len(targets) > limit:
            raise serializers.ValidationError(f"at most {limit} target channels per event")
        attrs["targets"] = Targets(targets)
        return attrs


def _later(attrs: dict[str, Any]) -> Later | None:
    """When the event goes out, if not now: `deliver_at`, `delay` or `digest` (one of them)."""
    given = [name for name in ("deliver_at", "delay", "digest") if name in attrs]
    if len(given) > 1:
        raise serializers.ValidationError(f"give one of deliver_at, delay and digest, not {' and '.join(given)}")
    if "digest" in attrs:
        return Later(digest=attrs["digest"])
    now = timezone.now()
    if "delay" in attrs:
        deliver_at = now + timedelta(seconds=attrs["delay"])
    elif "deliver_at" in attrs:
        deliver_at = attrs["deliver_at"]
    else:
        return None
    days = notifier_settings.MAX_SCHEDULE_DAYS
    if deliver_at <= now:
        raise serializers.ValidationError({"deliver_at": ["is in the past"]})
    if deliver_at > now + timedelta(days=days):
        raise serializers.ValidationError({given[0]: [f"is more than {days} days ahead (NOTIFIER_MAX_SCHEDULE_DAYS)"]})
    return Later(deliver_at=deliver_at)


def publish_request(attrs: dict[str, Any], publisher: str) -> PublishRequest:
    """What `validated_notify`'s data asks `publish()` to do, for `publisher`."""
    return PublishRequest(
        attrs["targets"],
        attrs["event"],
        attrs.get("data"),
        idempotency_key=attrs.get("idempotency_key"),
        publisher=publisher,
        inbox=attrs.get("inbox", False),
        category=attrs.get("category"),
        push=attrs.get("push"),
    )


def validated_notify(body: Any) -> dict[str, Any]:
    """One event's validated data (`targets` included); raises DRF's ValidationError."""
    attrs = quick_notify_attrs(body)
    if attrs is None:
        serializer = NotifyRequestSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        attrs = dict(serializer.validated_data)
    return attrs


_NOTIFY_FIELDS = frozenset(
    ["channel", "channels", "user", "users", "event", "data", "idempotency_key", "inbox", "category"]
)


def quick_notify_attrs(body: Any) -> dict[str, Any] | None:
    """NotifyRequestSerializer's validated data for an ordinary body, or None: then the
    serializer itself decides (and words any error).

    DRF's field machinery costs tens of microseconds per event, and the batch endpoint must
    publish 20,000 events/s per process (issue 6). This accepts only bodies the serializer
    accepts, with the same validated data (tests/test_api.py compares both on generated bodies).
    """
    if type(body) is not dict or not _NOTIFY_FIELDS.issuperset(body):
        return None
    event = body.get("event")
    if not _plain_text(event, MAX_EVENT_NAME_LENGTH):
        return None
    attrs: dict[str, Any] = {}
    targets: list[str] = []
    if "channel" in body:
        if not _known_channel(body["channel"]):
            return None
        attrs["channel"] = body["channel"]
        targets.append(body["channel"])
    if "channels" in body:
        channels = body["channels"]
        if type(channels) is not list or not channels or not all(_known_channel(c) for c in channels):
            return None
        attrs["channels"] = list(channels)
        targets.extend(channels)
    if "user" in body:
        user = quick_user_id(body["user"])
        if user is None:
            return None
        attrs["user"] = user
        targets.append(personal_channel(user))
    if "users" in body:
        users = body["users"]
        ids = [quick_user_id(u) for u in users] if type(users) is list and users else [None]
        if None in ids:
            return None
        attrs["users"] = ids
        targets.extend(personal_channel(u) for u in ids if u is not None)
    attrs["event"] = event
    attrs["data"] = body.get("data")
    if "idempotency_key" in body:
        if not _plain_text(body["idempotency_key"], MAX_IDEMPOTENCY_KEY_LENGTH):
            return None
        attrs["idempotency_key"] = body["idempotency_key"]
    attrs["inbox"] = body.get("inbox", False)
    if type(attrs["inbox"]) is not bool:
        return None
    if "category" in body:
        if type(body["category"]) is not str or not CATEGORY_RE.fullmatch(body["category"]):
            return None
        attrs["category"] = body["category"]
    targets = list(dict.fromkeys(targets))
    if not targets or len(targets) > notifier_settings.MAX_CHANNELS_PER_PUBLISH:
        return None
    attrs["targets"] = Targets(targets)
    return attrs


def _plain_text(value: Any, max_length: int) -> bool:
    """A string a StrictCharField keeps as it is: not blank, no surrounding space, printable (so
    no NUL, control or surrogate character, which DRF refuses)."""
    return type(value) is str and 0 < len(value) <= max_length and value.isprintable() and value.strip() == value


def _known_channel(channel: Any) -> bool:
    try:
        validate_channel(channel)
    except InvalidChannel:
        return False
    return policy_of(channel) is not None


def quick_user_id(value: Any) -> str | None:
    """What UserIdField makes of `value`, or None where it would refuse it."""
    if type(value) is int:
        value = str(value)
    return value if type(value) is str and USER_ID_RE.fullmatch(value) else None


class BatchRequestSerializer(serializers.Serializer):
    events = serializers.ListField(child=serializers.JSONField(), allow_empty=False)

    def validate_events(self, events: list[Any]) -> list[Any]:
        limit = notifier_settings.MAX_BATCH_EVENTS
        if len(events) > limit:
            raise serializers.ValidationError(f"at most {limit} events per batch")
        return events
