"""Operations endpoints: readiness and Prometheus metrics (liveness is api.views.HealthView).

Plain Django views: they must answer even when Redis, which DRF's throttling uses, is broken."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from realtime import metrics
from realtime.bridge import run_sync
from realtime.conf import notifier_settings
from realtime.redis import get_redis

from .exceptions import error_body

CHECK_TIMEOUT_SECS = 3.0


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "message": f"{type(exc).__name__}: {exc}"}


async def _check_redis() -> dict[str, dict[str, Any]]:
    if notifier_settings.embedded:
        skipped = {"ok": True, "message": "embedded mode: no Redis"}
        return {"redis": skipped, "redis_policy": skipped, "channel_layer": await _check_layer()}
    checks: dict[str, dict[str, Any]] = {}
    redis = get_redis()
    try:
        await asyncio.wait_for(redis.ping(), CHECK_TIMEOUT_SECS)
        checks["redis"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
        checks["redis_policy"] = {"ok": False, "message": "Redis is unreachable"}
        checks["channel_layer"] = {"ok": False, "message": "Redis is unreachable"}
        return checks
    try:
        policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy")
        policy = policy.decode() if isinstance(policy, bytes) else policy
        checks["redis_policy"] = (
            {"ok": True, "policy": policy}
            if policy == "noeviction"
            else {
                "ok": False,
                "policy": policy,
                "message": "set maxmemory-policy noeviction: eviction deletes "
                "history, idempotency records and Celery queues",
            }
        )
    except Exception as exc:  # noqa: BLE001 - CONFIG may be disabled on managed Redis
        checks["redis_policy"] = {"ok": True, "policy": "unknown", "message": f"CONFIG GET refused: {exc}"}
    checks["channel_layer"] = await _check_layer()
    return checks


async def _check_layer() -> dict[str, Any]:
    """A message sent through the channel layer comes back."""
    layer = get_channel_layer()
    try:
        channel = await asyncio.wait_for(layer.new_channel(prefix="readyz."), CHECK_TIMEOUT_SECS)
        receiving = asyncio.ensure_future(layer.receive(channel))
        try:
            await asyncio.wait_for(layer.send(channel, {"type": "readyz.probe"}), CHECK_TIMEOUT_SECS)
            message = await asyncio.wait_for(receiving, CHECK_TIMEOUT_SECS)
        finally:
            receiving.cancel()
        return {"ok": message.get("type") == "readyz.probe"}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "message": f"{type(exc).__name__}: {exc}"}


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Database, Redis and the channel layer work, and Redis will not evict our data."""
    checks = {"database": _check_database(), **run_sync(_check_redis)}
    failing = [name for name, check in checks.items() if not check["ok"]]
    if not failing:
        return JsonResponse({"status": "ready", "checks": checks})
    body = error_body("not_ready", f"failing: {', '.join(failing)}", {"failing": failing, "checks": checks})
    return JsonResponse(body, status=503)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; protected by NOTIFIER_METRICS_TOKEN (Bearer) when it is set."""
    token = settings.NOTIFIER_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return JsonResponse(
                error_body("invalid_metrics_token", "Authorization: Bearer <metrics token>"), status=401
            )
    try:
        registry = run_sync(metrics.snapshot)
    except Exception as exc:  # noqa: BLE001 - Redis down
        return JsonResponse(error_body("unavailable", f"metrics unavailable: {exc}"), status=503)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
