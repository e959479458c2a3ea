"""Scheduled events over the API (DESIGN §12), for backends with the `publish` scope: list
the ones not yet delivered, and cancel one. A key sees and cancels only events whose every
target its channel patterns allow."""

from __future__ import annotations

from django.db import connection
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from realtime import inbox, scheduling
from realtime.channels import personal_channel
from realtime.models import ScheduledEvent
from realtime.notify import ChannelField, UserIdField

from .authentication import Publisher
from .inbox import CursorField
from .models import ApiKey
from .views import ERRORS, KeyScopedView

MAX_PAGE = 200


class ListQuery(serializers.Serializer):
    channel = ChannelField(required=False)
    user = UserIdField(required=False)
    limit = serializers.IntegerField(min_value=1, max_value=MAX_PAGE, default=50)
    cursor = CursorField(required=False)


def _key(request: Request) -> ApiKey:
    publisher = request.user
    assert isinstance(publisher, Publisher)
    return publisher.key


class ScheduledView(KeyScopedView):
    @extend_schema(
        parameters=[
            OpenApiParameter("channel", str),
            OpenApiParameter("user", str, description="the user's personal channel"),
            OpenApiParameter("limit", int, description=f"1 to {MAX_PAGE} (default 50)"),
            OpenApiParameter("cursor", str, description="`next` of the previous page"),
        ],
        responses={200: {"type": "object"}, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        query = ListQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        attrs = query.validated_data
        channel = attrs.get("channel") or (personal_channel(attrs["user"]) if "user" in attrs else None)
        rows = ScheduledEvent.objects.filter(status=ScheduledEvent.PENDING, digest_key="").order_by("pk")
        if "cursor" in attrs:
            rows = rows.filter(pk__gt=attrs["cursor"])
        if channel is not None and connection.features.supports_json_field_contains:
            rows = rows.filter(channels__contains=[channel])
        key, found, last = _key(request), [], None
        for row in rows.iterator(chunk_size=MAX_PAGE):  # the key's own: filtered here, page by page
            last = row.pk
            if (channel is None or channel in row.channels) and not key.disallowed(row.channels):
                found.append(scheduling.describe(row))
                if len(found) == attrs["limit"]:
                    break
        full = len(found) == attrs["limit"] and last is not None
        return Response({"scheduled": found, "next": inbox.encode_cursor(last) if full and last else None})


class ScheduledEventView(KeyScopedView):
    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, event_id: str) -> Response:
        row = ScheduledEvent.objects.filter(event_id=event_id, digest_key="").first()
        if row is None or _key(request).disallowed(row.channels) or not scheduling.cancel(event_id):
            raise exceptions.NotFound("no scheduled event with this id waits for delivery")
        return Response(status=status.HTTP_204_NO_CONTENT)
