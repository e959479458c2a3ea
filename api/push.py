"""The Web Push API (DESIGN §11): the service's public key, and a user's browser subscriptions.

End users register their own browsers (a connection token, or the Django session), as for the
inbox; backends act for a user under `/api/users/<user>/push/subscriptions` (`users` scope).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime import push, vapid
from realtime.notify import StrictCharField, StrictObjectSerializer

from .exceptions import ServiceUnavailable
from .inbox import ForUser, InboxView
from .views import ERRORS


class PushNotConfigured(ServiceUnavailable):
    default_code = "push_not_configured"


class KeyView(APIView):
    """`GET /api/push/key`: the public key browsers subscribe with (`applicationServerKey`)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(responses={200: {"type": "object", "properties": {"public_key": {"type": "string"}}}, **ERRORS})
    def get(self, request: Request) -> Response:
        try:
            return Response({"public_key": vapid.public_key()})
        except vapid.NotConfigured as exc:
            raise PushNotConfigured(str(exc)) from None


class Keys(StrictObjectSerializer):
    p256dh = StrictCharField(max_length=128)
    auth = StrictCharField(max_length=64)


class SubscriptionBody(StrictObjectSerializer):
    """A browser's `PushSubscription.toJSON()`."""

    endpoint = StrictCharField(max_length=2048)
    keys = Keys()
    expirationTime = serializers.IntegerField(required=False, allow_null=True, min_value=0)  # noqa: N815 - the browser's name


class SubscriptionsView(InboxView):
    @extend_schema(responses={200: {"type": "object"}, **ERRORS})
    def get(self, request: Request, **_: str) -> Response:
        return Response({"subscriptions": push.subscriptions_of(self.user_id(request))})

    @extend_schema(request=SubscriptionBody, responses={200: {"type": "object"}, 201: {"type": "object"}, **ERRORS})
    def post(self, request: Request, **_: str) -> Response:
        body = SubscriptionBody(data=request.data)
        body.is_valid(raise_exception=True)
        attrs = body.validated_data
        expires = attrs.get("expirationTime")
        try:
            done = push.register(
                self.user_id(request),
                attrs["endpoint"],
                attrs["keys"]["p256dh"],
                attrs["keys"]["auth"],
                None if expires is None else datetime.fromtimestamp(expires / 1000, UTC),
            )
        except push.InvalidSubscription as exc:
            raise exceptions.ValidationError(str(exc)) from None
        return Response({"id": done.id}, status=status.HTTP_201_CREATED if done.created else status.HTTP_200_OK)


class SubscriptionView(InboxView):
    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, subscription_id: int, **_: str) -> Response:
        if not push.unregister(self.user_id(request), subscription_id):
            raise exceptions.NotFound("no such subscription")
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserSubscriptionsView(ForUser, SubscriptionsView):
    pass


class UserSubscriptionView(ForUser, SubscriptionView):
    pass
