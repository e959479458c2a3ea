"""Operations: readiness, and metrics aggregated across processes."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from .support import RedisServer, Server, post_json, service_env
from .test_security import get_json
from .wsclient import Client

pytestmark = pytest.mark.integration

METRICS_TOKEN = "metrics-token-for-tests"


def get_text(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str) -> float:
    """The value of one sample line (`name{labels} value`) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name or line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_readyz_follows_redis(service_db: Path, workdir: Path, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    server = Server(service_env(redis_server.url, service_db), workdir)
    try:
        status, body = get_json(f"{server.http}/readyz", None)
        assert status == 200 and body["status"] == "ready", body
        assert set(body["checks"]) == {"database", "redis", "redis_policy", "channel_layer"}

        redis_server.stop()
        status, body = get_json(f"{server.http}/readyz", None)
        assert (status, body["code"]) == (503, "not_ready")
        assert "redis" in body["details"]["failing"] and "channel_layer" in body["details"]["failing"]
        assert get_json(f"{server.http}/healthz", None)[0] == 200  # alive, just not ready

        redis_server.start()
        deadline = time.monotonic() + 20
        while get_json(f"{server.http}/readyz", None)[0] != 200:
            assert time.monotonic() < deadline, get_json(f"{server.http}/readyz", None)
            time.sleep(0.3)

        redis_server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        status, body = get_json(f"{server.http}/readyz", None)
        assert (status, body["details"]["failing"]) == (503, ["redis_policy"])
        assert "noeviction" in body["details"]["checks"]["redis_policy"]["message"]
    finally:
        server.stop()
        redis_server.stop()


async def test_metrics_count_across_processes(
    redis_server: RedisServer, service_db: Path, workdir: Path, api_key: str
) -> None:
    env = service_env(
        redis_server.url,
        service_db,
        NOTIFIER_METRICS_TOKEN=METRICS_TOKEN,
        NOTIFIER_REDIS_PREFIX=f"m{uuid.uuid4().hex[:6]}",
    )
    first, second = Server(env, workdir), Server(env, workdir)
    try:
        assert get_text(f"{first.http}/metrics")[0] == 401
        assert get_text(f"{first.http}/metrics", "wrong")[0] == 401
        status, before = get_text(f"{second.http}/metrics", METRICS_TOKEN)
        assert status == 200 and "notifier_events_published_total" in before

        channel = f"metrics.{uuid.uuid4().hex[:8]}"
        clients = [await Client.connect(server.ws) for server in (first, second) for _ in range(2)]
        for client in clients:
            await client.subscribe(channel)
        for n in range(5):
            status, _ = post_json(
                f"{(first, second)[n % 2].http}/api/notify", {"channel": channel, "event": "m"}, api_key
            )
            assert status == 202
        for client in clients:
            await client.events(5)

        def totals() -> tuple[float, float, float, float]:
            text = get_text(f"{first.http}/metrics", METRICS_TOKEN)[1]
            return (
                sample(text, 'notifier_events_published_total{source="api"}'),
                sample(text, "notifier_frames_delivered_total"),
                sample(text, "notifier_open_connections"),
                sample(text, "notifier_publish_latency_seconds_count"),
            )

        deadline = time.monotonic() + 15
        while totals() != (5, 20, 4, 5):
            assert time.monotonic() < deadline, totals()
            time.sleep(0.3)
        for client in clients:
            await client.close()
    finally:
        first.stop()
        second.stop()
