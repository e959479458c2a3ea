"""Operations: readiness, and metrics aggregated across processes."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import websockets

from .support import (
    ROOT,
    VENV_BIN,
    Process,
    RedisServer,
    Server,
    free_port,
    manage,
    post_json,
    service_env,
    wait_until,
)
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


def uvicorn_options(argv: list[str]) -> list[str]:
    """The options of a uvicorn command line, without where it listens."""
    options, skip = [], False
    for arg in argv[2:]:  # after `uvicorn notifier.asgi:application`
        if skip:
            skip = False
        elif arg in ("--host", "--port", "--forwarded-allow-ips"):
            skip = True
        else:
            options.append(arg)
    return options


def procfile_argv(port: int) -> list[str]:
    """deploy/Procfile's web1 command, on another port."""
    line = next(line for line in (ROOT / "deploy/Procfile").read_text().splitlines() if line.startswith("web1:"))
    argv = shlex.split(line.split(":", 1)[1])
    assert argv[0] == ".venv/bin/uvicorn", argv
    argv[0] = str(VENV_BIN / "uvicorn")
    argv[argv.index("--port") + 1] = str(port)
    return argv


class ProcfileServer(Server):
    """Uvicorn started with deploy/Procfile's command line (the production flags)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port, self.kind = free_port(), "uvicorn"
        Process.__init__(self, f"procfile:{self.port}", procfile_argv(self.port), env, workdir / f"web-{self.port}.log")
        wait_until(self.healthy, what=f"uvicorn from deploy/Procfile on port {self.port} (log: {self.log_path})")


def sample(text: str, name: str) -> float:
    """The value of one sample line (`name{labels} value`) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name or line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_readyz_follows_redis(service_db: str, workdir: Path, tmp_path: Path) -> None:
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
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
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


def test_the_systemd_unit_runs_uvicorn_as_the_procfile_does() -> None:
    unit = (ROOT / "deploy/systemd/notifier-web@.service").read_text().replace("\\\n", " ")
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    options = uvicorn_options(shlex.split(exec_start.removeprefix("ExecStart=")))
    assert options == uvicorn_options(procfile_argv(8001))
    assert options[options.index("--timeout-graceful-shutdown") + 1] == "10"
    # Drain (at most 5 s) and Uvicorn's graceful shutdown (10 s) end before systemd's SIGKILL.
    assert "TimeoutStopSec=20" in unit


async def test_health_endpoints_answer_on_loopback_whatever_allowed_hosts_say(
    service_db: str, workdir: Path, tmp_path: Path
) -> None:
    """docs/deploy.md probes 127.0.0.1:<port>; DJANGO_ALLOWED_HOSTS lists the public name only."""
    redis_server = RedisServer(tmp_path)
    env = service_env(
        redis_server.url,
        service_db,
        DJANGO_ALLOWED_HOSTS="notifier.example.com",
        NOTIFIER_METRICS_TOKEN=METRICS_TOKEN,
        NOTIFIER_REDIS_PREFIX=f"h{uuid.uuid4().hex[:6]}",
    )
    server = ProcfileServer(env, workdir)  # its start waits for /healthz on 127.0.0.1
    try:
        assert get_json(f"{server.http}/healthz", None) == (200, {"status": "ok"})
        status, body = get_json(f"{server.http}/readyz", None)
        assert status == 200 and body["status"] == "ready", body
        assert get_text(f"{server.http}/metrics")[0] == 401
        status, text = get_text(f"{server.http}/metrics", METRICS_TOKEN)
        assert status == 200 and "notifier_open_connections" in text
        # Django's own routes still check Host.
        assert get_json(f"{server.http}/api/tokens", None)[0] == 400
        request = urllib.request.Request(f"{server.http}/readyz", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310
        refused.value.close()
        assert refused.value.code == 405
    finally:
        server.stop()
        redis_server.stop()


async def test_readyz_leaves_no_redis_subscription_behind(service_db: str, workdir: Path, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    server = Server(service_env(redis_server.url, service_db), workdir, kind="uvicorn")

    def counts() -> tuple[int, int, int]:
        with redis_server.client() as client:
            channels = client.pubsub_channels()
            numpat = client.pubsub_numpat()
            clients = client.client_list()
        return len(channels), int(numpat), len(clients) - 1  # without this client

    try:
        assert get_json(f"{server.http}/readyz", None)[0] == 200
        before = counts()
        assert before[0] >= 1, before  # the probe's own channel is there, once
        for _ in range(20):
            status, body = get_json(f"{server.http}/readyz", None)
            assert status == 200 and body["checks"]["channel_layer"] == {"ok": True}, body
        assert counts() == before
    finally:
        server.stop()
        redis_server.stop()


async def test_readyz_reports_an_unknown_policy_when_config_is_refused(
    service_db: str, workdir: Path, tmp_path: Path
) -> None:
    """Managed Redis services refuse CONFIG: the policy is reported unknown, and the process
    stays ready (docs/operations.md)."""
    redis_server = RedisServer(tmp_path)
    redis_server.command("ACL", "SETUSER", "default", "-config")
    server = Server(service_env(redis_server.url, service_db), workdir, kind="uvicorn")
    try:
        status, body = get_json(f"{server.http}/readyz", None)
        assert status == 200, body
        policy = body["checks"]["redis_policy"]
        assert policy["ok"] is True and policy["policy"] == "unknown", policy
        assert "CONFIG GET refused" in policy["message"] and "noeviction" in policy["message"]
    finally:
        server.stop()
        redis_server.stop()


async def test_redis_errors_in_the_hub_are_counted(
    service_db: str, workdir: Path, tmp_path: Path, api_key: str
) -> None:
    redis_server = RedisServer(tmp_path)
    env = service_env(redis_server.url, service_db, NOTIFIER_REDIS_PREFIX=f"e{uuid.uuid4().hex[:6]}")
    server = Server(env, workdir, kind="uvicorn")
    channel = f"errors.{uuid.uuid4().hex[:8]}"
    try:
        client = await Client.connect(server.ws)
        await client.subscribe(channel)
        assert post_json(f"{server.http}/api/notify", {"channel": channel, "event": "e"}, api_key)[0] == 202
        await client.events(1)
        redis_server.stop()
        await asyncio.sleep(6)  # the hub's position check (every 5 s) fails meanwhile
        redis_server.start()
        name = 'notifier_redis_errors_total{operation="position_check"}'
        deadline = time.monotonic() + 20
        while sample(text := get_text(f"{server.http}/metrics")[1], name) < 1:
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.3)
        await client.close()
    finally:
        server.stop()
        redis_server.stop()


async def test_uvicorn_refuses_huge_frames_before_buffering_them(
    redis_server: RedisServer, service_db: str, workdir: Path
) -> None:
    """--ws-max-size: a frame a little over NOTIFIER_MAX_FRAME_BYTES gets the protocol's error
    frame; one far over it (under Uvicorn's 16 MiB default) is refused by Uvicorn with 1009."""
    server = ProcfileServer(service_env(redis_server.url, service_db), workdir)
    try:
        client = await Client.connect(server.ws)
        await client.send(json.dumps({"op": "subscribe", "channel": "x" * 100_000}))
        error = await client.recv()
        assert error["type"] == "error" and error["code"] == "frame_too_large", error
        with pytest.raises(websockets.ConnectionClosed) as closed:  # the close may come while still sending
            await client.send(json.dumps({"op": "subscribe", "channel": "x" * 1_000_000}))
            await client.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        server.stop()


def test_the_documented_production_settings_pass_djangos_deploy_checks(tmp_path: Path) -> None:
    """docs/deploy.md's /etc/notifier.env (with DJANGO_HTTPS=1): `manage.py check --deploy` is clean."""
    env = service_env(
        "redis://127.0.0.1:1/0",  # check --deploy connects to nothing
        tmp_path / "db.sqlite3",
        DJANGO_SECRET_KEY="a-production-secret-key-" + uuid.uuid4().hex * 2,
        DJANGO_ALLOWED_HOSTS="notifier.example.com",
        DJANGO_HTTPS="1",
    )
    out = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert "no issues" in out, out
