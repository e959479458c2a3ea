"""The HTTP API: DRF views over `realtime` (publish, history, presence, tokens)."""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from redis.exceptions import RedisError
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.bridge import run_sync
from realtime.channels import InvalidChannel, personal_channel, policy_of, validate_channel
from realtime.history import get_history
from realtime.notify import BatchRequestSerializer, NotifyRequestSerializer
from realtime.presence import get_presence, presence_summary
from realtime.publish import PublishError, PublishResult, Unavailable, publish
from realtime.tokens import mint_connection_token, mint_subscription_token

from .authentication import Publisher, publisher_of
from .exceptions import batch_error, nothing_published
from .permissions import HasScope, check_key_channels, check_key_grants
from .serializers import (
    BatchResultSerializer,
    ErrorSerializer,
    HealthSerializer,
    HistoryResponseSerializer,
    NotifyResponseSerializer,
    PresenceResponseSerializer,
    TokenRequestSerializer,
    TokenResponseSerializer,
)
from .throttling import PublishRateThrottle

HISTORY_PAGE_MAX = 1000
ERRORS = {code: ErrorSerializer for code in (400, 401, 403, 404, 413, 429, 503)}


class KeyScopedView(APIView):
    """A view for API keys holding `required_scope`, limited to the key's channel patterns."""

    permission_classes = [IsAuthenticated, HasScope]
    required_scope = "publish"

    def check_channels(self, request: Request, channels: list[str]) -> None:
        user = request.user
        assert isinstance(user, Publisher)
        check_key_channels(user.key, channels)


def publish_validated(attrs: dict[str, Any], publisher: str) -> PublishResult:
    return publish(
        attrs["targets"],
        attrs["event"],
        attrs.get("data"),
        idempotency_key=attrs.get("idempotency_key"),
        publisher=publisher,
    )


class NotifyView(KeyScopedView):
    throttle_classes = [PublishRateThrottle]

    @extend_schema(request=NotifyRequestSerializer, responses={202: NotifyResponseSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        serializer = NotifyRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        self.check_channels(request, serializer.validated_data["targets"])
        result = publish_validated(serializer.validated_data, publisher_of(request))
        return Response(result.as_dict(), status=status.HTTP_202_ACCEPTED)


class NotifyBatchView(KeyScopedView):
    throttle_classes = [PublishRateThrottle]

    def throttle_cost(self, request: Request) -> int:
        events = request.data.get("events") if isinstance(request.data, dict) else None
        return len(events) if isinstance(events, list) else 1

    @extend_schema(request=BatchRequestSerializer, responses={202: BatchResultSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        batch = BatchRequestSerializer(data=request.data)
        batch.is_valid(raise_exception=True)
        results = [self.publish_one(request, body) for body in batch.validated_data["events"]]
        if nothing_published(results):
            raise Unavailable("Redis is unavailable; no event was published")
        return Response({"results": results}, status=status.HTTP_202_ACCEPTED)

    def publish_one(self, request: Request, body: Any) -> dict[str, Any]:
        serializer = NotifyRequestSerializer(data=body)
        try:
            serializer.is_valid(raise_exception=True)
            self.check_channels(request, serializer.validated_data["targets"])
            return publish_validated(serializer.validated_data, publisher_of(request)).as_dict()
        except (exceptions.APIException, PublishError) as exc:
            return batch_error(exc)


class ChannelReadView(KeyScopedView):
    required_scope = "read"

    def channel(self, request: Request, channel: str) -> str:
        try:
            validate_channel(channel)
        except InvalidChannel as exc:
            raise exceptions.ValidationError({"channel": [str(exc)]}) from None
        if policy_of(channel) is None:
            raise exceptions.NotFound(f"unknown namespace in {channel!r}")
        self.check_channels(request, [channel])
        return channel


class HistoryView(ChannelReadView):
    @extend_schema(
        parameters=[
            OpenApiParameter("since", int, description="Exclusive: events after this offset (default 0)"),
            OpenApiParameter("limit", int, description=f"1 to {HISTORY_PAGE_MAX} (default 100)"),
        ],
        responses={200: HistoryResponseSerializer, **ERRORS},
    )
    def get(self, request: Request, channel: str) -> Response:
        channel = self.channel(request, channel)
        since = _int_param(request, "since", default=0, minimum=0)
        limit = _int_param(request, "limit", default=100, minimum=1, maximum=HISTORY_PAGE_MAX)
        try:
            page = run_sync(get_history().read, channel, since, limit)
        except (RedisError, OSError) as exc:
            raise Unavailable("Redis is unavailable") from exc
        return Response(
            {
                "channel": channel,
                "offset": page.position.offset,
                "epoch": page.position.epoch,
                "complete": page.complete,
                "events": [json.loads(frame) for _, frame in page.frames],
            }
        )


class PresenceView(ChannelReadView):
    @extend_schema(responses={200: PresenceResponseSerializer, **ERRORS})
    def get(self, request: Request, channel: str) -> Response:
        channel = self.channel(request, channel)
        policy = policy_of(channel)
        if policy is None or not policy.presence:
            raise exceptions.NotFound(f"presence is not enabled for {channel!r}")
        try:
            members = run_sync(get_presence().members, channel)
        except (RedisError, OSError) as exc:
            raise Unavailable("Redis is unavailable") from exc
        return Response({"channel": channel, **presence_summary(members)})


class TokenView(KeyScopedView):
    required_scope = "tokens"

    @extend_schema(request=TokenRequestSerializer, responses={201: TokenResponseSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        attrs = serializer.validated_data
        publisher = request.user
        assert isinstance(publisher, Publisher)
        if "channel" in attrs:
            # Grants this one channel to a connection already authenticated as the user.
            check_key_grants(publisher.key, [attrs["channel"]])
            token, expires_at = mint_subscription_token(attrs["user"], attrs["channel"], attrs["expires_in"])
        else:
            # A connection token authenticates as the user, which opens the user's personal
            # channel: the key must cover it too.
            personal = personal_channel(attrs["user"])
            check_key_grants(publisher.key, [personal, *attrs.get("channels", [])])
            token, expires_at = mint_connection_token(attrs["user"], attrs.get("channels"), attrs["expires_in"])
        return Response({"token": token, "expires_at": expires_at}, status=status.HTTP_201_CREATED)


def _int_param(request: Request, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise exceptions.ValidationError({name: ["must be an integer"]}) from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise exceptions.ValidationError({name: [f"must be at least {minimum}{bound}"]})
    return value


class HealthView(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(responses={200: HealthSerializer})
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})
