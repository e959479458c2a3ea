"""Request and answer bodies of the HTTP API beyond the notify contract (realtime/notify.py)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from realtime.notify import ChannelField, StrictCharField, StrictObjectSerializer, UserIdField

MAX_CHANNEL_PATTERN_LENGTH = 128


class PositionSerializer(serializers.Serializer):
    offset = serializers.IntegerField()
    epoch = serializers.CharField()


class NotifyResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    channels = serializers.DictField(child=PositionSerializer())
    inbox = serializers.DictField(
        child=serializers.CharField(), required=False, help_text="user -> stored notification id"
    )


MAX_TOKEN_LIFETIME_SECS = 7 * 24 * 3600
DEFAULT_TOKEN_LIFETIME_SECS = 3600


class TokenRequestSerializer(StrictObjectSerializer):
    """A connection token for `user`, or with `channel` a subscription token for one private channel."""

    user = UserIdField()
    channels = serializers.ListField(
        child=StrictCharField(max_length=MAX_CHANNEL_PATTERN_LENGTH), required=False, max_length=100
    )
    channel = ChannelField(required=False)
    expires_in = serializers.IntegerField(
        required=False, default=DEFAULT_TOKEN_LIFETIME_SECS, min_value=1, max_value=MAX_TOKEN_LIFETIME_SECS
    )

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


class InboxCountsSerializer(serializers.Serializer):
    unread = serializers.IntegerField()
    unseen = serializers.IntegerField()
    total = serializers.IntegerField()


class NotificationSerializer(serializers.Serializer):
    id = serializers.CharField()
    event = serializers.CharField()
    data = serializers.JSONField(allow_null=True)  # type: ignore[assignment]
    category = serializers.CharField(allow_null=True)
    channel = serializers.CharField()
    created_at = serializers.DateTimeField()
    read_at = serializers.DateTimeField(allow_null=True)
    seen_at = serializers.DateTimeField(allow_null=True)
    archived_at = serializers.DateTimeField(allow_null=True)


class InboxPageSerializer(serializers.Serializer):
    notifications = NotificationSerializer(many=True)
    next = serializers.CharField(allow_null=True)
    counts = InboxCountsSerializer()


class InboxMarkedSerializer(serializers.Serializer):
    updated = serializers.IntegerField()
    counts = InboxCountsSerializer()


class InboxChoiceSerializer(serializers.Serializer):
    inbox = serializers.BooleanField()
    push = serializers.BooleanField()


class InboxPreferencesSerializer(serializers.Serializer):
    categories = serializers.DictField(child=InboxChoiceSerializer())


class InboxErasedSerializer(serializers.Serializer):
    deleted = serializers.IntegerField()
