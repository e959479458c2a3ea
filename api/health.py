"""Operations endpoints: liveness, readiness and Prometheus metrics.

Under the ASGI server, `OperationsApp` (notifier/asgi.py) answers GET /healthz, /readyz and
/metrics before Django routing, the way /sse/ is routed: probes and Prometheus scrape
`127.0.0.1:<port>`, a Host that `DJANGO_ALLOWED_HOSTS` (the public name) does not list, and
these answers build no URL from Host, so there is nothing for ALLOWED_HOSTS to protect. They
must also answer when Redis is broken. The plain Django views
below give the same answers to Django's test client (and any other non-ASGI caller).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio.cluster import RedisCluster

from realtime import metrics, process
from realtime.bridge import run_sync
from realtime.conf import notifier_settings
from realtime.redis import cluster_mode, get_redis
from realtime.scope import header

from .exceptions import error_body

CHECK_TIMEOUT_SECS = 3.0
PATHS = ("/healthz", "/readyz", "/metrics")
JSON = "application/json"

Check = dict[str, Any]


def _check_database(close: bool = False) -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
    finally:
        if close:  # outside Django's request cycle nothing else closes this thread's connection
            connection.close()


async def _check_database_async() -> Check:
    try:
        check = sync_to_async(_check_database, thread_sensitive=False)
        return await asyncio.wait_for(check(close=True), CHECK_TIMEOUT_SECS)
    except TimeoutError:
        return {"ok": False, "message": f"no answer within {CHECK_TIMEOUT_SECS:g}s"}


async def _check_redis() -> dict[str, Check]:
    if notifier_settings.embedded:
        skipped = {"ok": True, "message": "embedded mode: no Redis"}
        return {"redis": skipped, "redis_policy": skipped, "channel_layer": await _check_layer()}
    checks: dict[str, Check] = {}
    redis = get_redis()
    try:
        await asyncio.wait_for(redis.ping(), CHECK_TIMEOUT_SECS)
        checks["redis"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
        checks["redis_policy"] = {"ok": False, "message": "Redis is unreachable"}
        checks["channel_layer"] = {"ok": False, "message": "Redis is unreachable"}
        return checks
    checks["redis_policy"] = await _check_policy(redis)
    checks["channel_layer"] = await _check_layer()
    if notifier_settings.REPLICA_ACKS:
        checks["replicas"] = await _check_replicas(redis, notifier_settings.REPLICA_ACKS)
    return checks


async def _check_replicas(redis: Any, required: int) -> Check:
    """With NOTIFIER_REPLICA_ACKS, how many replicas the master has online. Too few is reported
    but does not fail readiness: every process would leave the load balancer while subscribers
    still get every event; only the publishes' acknowledgement (503 not_replicated) waits."""
    try:
        infos = await asyncio.wait_for(_on_every_master(redis, redis.info, "replication"), CHECK_TIMEOUT_SECS)
    except Exception as exc:  # noqa: BLE001 - INFO refused (ACL): the publishes' WAIT still tells
        return {"ok": True, "replicas": "unknown", "required": required, "message": f"{type(exc).__name__}: {exc}"}
    online = min(  # in a cluster, the master with the fewest
        sum(
            1
            for name, value in info.items()
            if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        )
        for info in infos
    )
    check: Check = {"ok": True, "replicas": online, "required": required}
    if online < required:
        check["message"] = f"{online} of {required} replicas online: publishes answer 503 not_replicated"
    return check


async def _check_policy(redis: Any) -> Check:
    """`maxmemory-policy` must be noeviction (DESIGN §9).

    Managed Redis services often refuse CONFIG. The policy is then reported as "unknown" and
    the check passes: failing it would keep every process out of the load balancer for good
    on such a service, and the operator can check the policy in the provider's console."""
    try:
        answers = await asyncio.wait_for(
            _on_every_master(redis, redis.config_get, "maxmemory-policy"), CHECK_TIMEOUT_SECS
        )
    except Exception as exc:  # noqa: BLE001 - CONFIG disabled, renamed or not allowed by ACL
        return {
            "ok": True,
            "policy": "unknown",
            "message": f"CONFIG GET refused ({type(exc).__name__}: {exc}); check that maxmemory-policy is noeviction",
        }
    policies = [answer.get("maxmemory-policy", answer.get(b"maxmemory-policy")) for answer in answers]
    policies = [policy.decode() if isinstance(policy, bytes) else policy for policy in policies]
    # In a cluster, the first wrong one.
    policy = next((policy for policy in policies if policy != "noeviction"), "noeviction")
    if policy == "noeviction":
        return {"ok": True, "policy": policy}
    return {
        "ok": False,
        "policy": policy if policy is not None else "unknown",
        "message": "set maxmemory-policy noeviction: eviction deletes history, idempotency records and Celery queues",
    }


async def _on_every_master(redis: Any, command: Any, *args: Any) -> list[Any]:
    """`command`'s answer from the master, or in cluster mode from every master."""
    if not cluster_mode():
        return [await command(*args)]
    answers = await command(*args, target_nodes=RedisCluster.PRIMARIES)
    return list(answers.values())


@dataclass
class _Probe:
    """One channel-layer channel per event loop for /readyz, reused by every check.

    A new channel per check would leave one more Redis subscription behind each time: the
    pub/sub layer only unsubscribes a channel when a receive on it is cancelled."""

    layer: BaseChannelLayer
    channel: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_probes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Probe] = weakref.WeakKeyDictionary()


async def _check_layer() -> Check:
    """A message sent through the channel layer comes back."""
    layer = get_channel_layer()
    loop = asyncio.get_running_loop()
    probe = _probes.get(loop)
    if probe is None or probe.layer is not layer:
        probe = _probes[loop] = _Probe(layer)
    try:
        async with asyncio.timeout(2 * CHECK_TIMEOUT_SECS):
            async with probe.lock:  # one check at a time on the shared channel
                return await _round_trip(probe)
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "message": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__}


async def _round_trip(probe: _Probe) -> Check:
    if probe.channel is None:
        probe.channel = await asyncio.wait_for(probe.layer.new_channel(prefix="readyz."), CHECK_TIMEOUT_SECS)
    channel, nonce = probe.channel, uuid.uuid4().hex
    await asyncio.wait_for(probe.layer.send(channel, {"type": "readyz.probe", "nonce": nonce}), CHECK_TIMEOUT_SECS)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECS):
            while True:  # skip anything an earlier check left behind
                message = await probe.layer.receive(channel)
                if message.get("nonce") == nonce:
                    return {"ok": message.get("type") == "readyz.probe"}
    except BaseException:
        # A cancelled receive unsubscribes its channel (channels-redis): the next check makes
        # a new one rather than send to a channel nobody listens to.
        probe.channel = None
        raise


async def readiness(database: Check | None = None) -> tuple[int, dict[str, Any]]:
    """(status, body) of /readyz: 200 when the database, Redis and the channel layer work and
    Redis will not evict our data; 503 naming what fails, or `draining` after SIGTERM."""
    if process.is_draining():
        checks: dict[str, Check] = {
            "draining": {"ok": False, "message": "SIGTERM received: closing connections, then exiting"}
        }
    else:
        if database is None:
            database = await _check_database_async()
        checks = {"database": database, **await _check_redis()}
    failing = [name for name, check in checks.items() if not check["ok"]]
    if not failing:
        return 200, {"status": "ready", "checks": checks}
    return 503, error_body("not_ready", f"failing: {', '.join(failing)}", {"failing": failing, "checks": checks})


async def metrics_answer(authorization: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of /metrics; the token (NOTIFIER_METRICS_TOKEN) is checked
    when it is set."""
    token = notifier_settings.METRICS_TOKEN
    if token and not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
        body = error_body("invalid_metrics_token", "Authorization: Bearer <metrics token>")
        return 401, json.dumps(body).encode(), JSON
    try:
        registry = await metrics.snapshot()
    except Exception as exc:  # noqa: BLE001 - Redis down
        return 503, json.dumps(error_body("unavailable", f"metrics unavailable: {exc}")).encode(), JSON
    return 200, generate_latest(registry), CONTENT_TYPE_LATEST


class OperationsApp:
    """ASGI: GET (or HEAD) /healthz, /readyz and /metrics here; everything else to `app`.

    The first HTTP request also chains the SIGTERM drain handler (realtime/process.py), so a
    process that has not had a WebSocket yet drains (and answers `draining`) too."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._drain_handler = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._drain_handler:
            self._drain_handler = True
            process.install_drain_handler()
        path = scope.get("path") if scope["type"] == "http" else None
        if path not in PATHS:
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = []
        if scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, _json(error_body("method_not_allowed", "use GET")), JSON
            headers.append((b"allow", b"GET, HEAD"))
        elif path == "/healthz":
            status, body, content_type = 200, _json({"status": "ok"}), JSON
        elif path == "/readyz":
            status, answer = await readiness()
            body, content_type = _json(answer), JSON
        else:
            authorization = header(scope, b"authorization") or ""
            status, body, content_type = await metrics_answer(authorization)
        headers += [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Database, Redis and the channel layer work, and Redis will not evict our data."""
    status, body = run_sync(readiness, _check_database())
    return JsonResponse(body, status=status)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; protected by NOTIFIER_METRICS_TOKEN (Bearer) when it is set."""
    status, body, content_type = run_sync(metrics_answer, request.headers.get("Authorization", ""))
    return HttpResponse(body, status=status, content_type=content_type)
