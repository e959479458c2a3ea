"""The publishing API: DRF views over `realtime.publish`."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.bridge import run_sync
from realtime.channels import InvalidChannel, policy_of, validate_channel
from realtime.history import get_history
from realtime.publish import PublishError, PublishResult, Unavailable, publish

from .authentication import publisher_of
from .exceptions import error_body, exception_handler
from .serializers import BatchRequestSerializer, NotifyRequestSerializer

HISTORY_PAGE_MAX = 1000


def publish_validated(attrs: dict[str, Any], publisher: str) -> PublishResult:
    return publish(
        attrs["targets"],
        attrs["event"],
        attrs.get("data"),
        idempotency_key=attrs.get("idempotency_key"),
        publisher=publisher,
    )


class NotifyView(APIView):
    def post(self, request: Request) -> Response:
        serializer = NotifyRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = publish_validated(serializer.validated_data, publisher_of(request))
        return Response(result.as_dict(), status=status.HTTP_202_ACCEPTED)


class NotifyBatchView(APIView):
    def post(self, request: Request) -> Response:
        batch = BatchRequestSerializer(data=request.data)
        batch.is_valid(raise_exception=True)
        results: list[dict[str, Any]] = []
        unavailable = 0
        for body in batch.validated_data["events"]:
            results.append(self.publish_one(body, publisher_of(request)))
            unavailable += results[-1].get("error", {}).get("code") == "unavailable"
        if unavailable == len(results):
            raise Unavailable("Redis is unavailable; no event was published")
        return Response({"results": results}, status=status.HTTP_202_ACCEPTED)

    def publish_one(self, body: Any, publisher: str) -> dict[str, Any]:
        serializer = NotifyRequestSerializer(data=body)
        try:
            serializer.is_valid(raise_exception=True)
            return publish_validated(serializer.validated_data, publisher).as_dict()
        except (exceptions.ValidationError, PublishError) as exc:
            response = exception_handler(exc, {})
            assert response is not None
            error = response.data
            return {"error": {"code": error["code"], "message": error["message"], "details": error["details"]}}


class HistoryView(APIView):
    def get(self, request: Request, channel: str) -> Response:
        try:
            validate_channel(channel)
        except InvalidChannel as exc:
            raise exceptions.ValidationError({"channel": [str(exc)]}) from None
        if policy_of(channel) is None:
            raise exceptions.NotFound(f"unknown namespace in {channel!r}")
        since = _int_param(request, "since", default=0, minimum=0)
        limit = _int_param(request, "limit", default=100, minimum=1, maximum=HISTORY_PAGE_MAX)
        try:
            page = run_sync(get_history().read, channel, since, limit)
        except Exception as exc:
            if isinstance(exc, OSError) or type(exc).__module__.startswith("redis"):
                raise Unavailable("Redis is unavailable") from exc
            raise
        return Response(
            {
                "channel": channel,
                "offset": page.position.offset,
                "epoch": page.position.epoch,
                "complete": page.complete,
                "events": [json.loads(frame) for _, frame in page.frames],
            }
        )


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

    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


__all__ = ["NotifyView", "NotifyBatchView", "HistoryView", "HealthView", "error_body"]
