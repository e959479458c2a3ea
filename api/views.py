"""The HTTP API: DRF views over `realtime` (publish, history, presence, tokens)."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import RequestDataTooBig
from drf_spectacular.utils import OpenApiParameter, extend_schema
from redis.exceptions import RedisError
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.bridge import run_sync
from realtime.channels import InvalidChannel, policy_of, validate_channel
from realtime.history import get_history
from realtime.notify import BatchRequestSerializer, NotifyRequestSerializer
from realtime.presence import get_presence, presence_summary
from realtime.publish import Unavailable

from . import tokens
from .authentication import Publisher
from .exceptions import payload_too_large
from .permissions import HasScope, check_key_channels
from .publishing import NotifyCall, answer
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


class NotifyView(APIView):
    """POST /api/notify: the DRF door to the notify core (api/publishing.py)."""

    batch = False

    @extend_schema(request=NotifyRequestSerializer, responses={202: NotifyResponseSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        return Response(run_sync(answer, notify_call(request, self.batch)), status=status.HTTP_202_ACCEPTED)


class NotifyBatchView(NotifyView):
    """POST /api/notify/batch."""

    batch = True

    @extend_schema(request=BatchRequestSerializer, responses={202: BatchResultSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        return super().post(request)


def notify_call(request: Request, batch: bool) -> NotifyCall:
    """The request as the core takes it; DRF's authentication found its key (401 without one)."""
    user = request.user
    assert isinstance(user, Publisher)  # IsAuthenticated
    try:
        return NotifyCall(batch, user.key, request.data)
    except (exceptions.ParseError, RequestDataTooBig) as exc:
        error = exc if isinstance(exc, exceptions.APIException) else payload_too_large()
        return NotifyCall(batch, user.key, None, error)


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
        publisher = request.user
        assert isinstance(publisher, Publisher)
        return Response(tokens.mint(publisher.key, request.data), status=status.HTTP_201_CREATED)


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
