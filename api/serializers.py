"""Request bodies of the publishing API; the Celery task validates its kwargs with these too."""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers

from realtime.channels import InvalidChannel, personal_channel, policy_of, validate_channel
from realtime.conf import notifier_settings

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.\-@=]{1,64}$")
MAX_IDEMPOTENCY_KEY_LENGTH = 128
MAX_CHANNEL_PATTERN_LENGTH = 128


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
        if not isinstance(data, str) or not USER_ID_RE.match(data):
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


class StrictObjectSerializer(serializers.Serializer):
    """Refuses a body that is not a JSON object, or that has fields we do not know (typos)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["body must be a JSON object"]}, code="invalid")
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in unknown}, code="invalid")
        return super().to_internal_value(data)


class NotifyRequestSerializer(StrictObjectSerializer):
    """One event: where it goes (channel/channels/user/users), its name and data."""

    channel = ChannelField(required=False)
    channels = serializers.ListField(child=ChannelField(), required=False, allow_empty=False)
    user = UserIdField(required=False)
    users = serializers.ListField(child=UserIdField(), required=False, allow_empty=False)
    event = StrictCharField(max_length=128)
    data = serializers.JSONField(required=False, allow_null=True, default=None)  # type: ignore[assignment]
    idempotency_key = StrictCharField(required=False, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
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
        attrs["targets"] = targets
        return attrs


class BatchRequestSerializer(serializers.Serializer):
    events = serializers.ListField(child=serializers.JSONField(), allow_empty=False)

    def validate_events(self, events: list[Any]) -> list[Any]:
        limit = notifier_settings.MAX_BATCH_EVENTS
        if len(events) > limit:
            raise serializers.ValidationError(f"at most {limit} events per batch")
        return events


class PositionSerializer(serializers.Serializer):
    offset = serializers.IntegerField()
    epoch = serializers.CharField()


class NotifyResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    channels = serializers.DictField(child=PositionSerializer())


MAX_TOKEN_LIFETIME_SECS = 7 * 24 * 3600


class TokenRequestSerializer(StrictObjectSerializer):
    """A connection token for `user`, or with `channel` a subscription token for one private channel."""

    user = UserIdField()
    channels = serializers.ListField(
        child=StrictCharField(max_length=MAX_CHANNEL_PATTERN_LENGTH), required=False, max_length=100
    )
    channel = ChannelField(required=False)
    expires_in = serializers.IntegerField(required=False, default=3600, min_value=1, max_value=MAX_TOKEN_LIFETIME_SECS)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "channel" in attrs and "channels" in attrs:
            raise serializers.ValidationError("give channels (a connection token) or channel (a subscription token)")
        return attrs


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField()
    expires_at = serializers.IntegerField(help_text="Unix time")


class PresenceUserSerializer(serializers.Serializer):
    user = serializers.CharField()
    connections = serializers.IntegerField()


class PresenceResponseSerializer(serializers.Serializer):
    channel = serializers.CharField()
    users = PresenceUserSerializer(many=True)
    anonymous_connections = serializers.IntegerField()
    total_connections = serializers.IntegerField()


class HistoryResponseSerializer(serializers.Serializer):
    channel = serializers.CharField()
    offset = serializers.IntegerField()
    epoch = serializers.CharField(allow_blank=True)
    complete = serializers.BooleanField()
    events = serializers.ListField(child=serializers.DictField())


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


class BatchResultSerializer(serializers.Serializer):
    results = serializers.ListField(child=serializers.DictField())


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField()
