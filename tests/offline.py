"""What the Web Push and webhook tests share: a Daphne process and a Celery worker (with beat)
on PostgreSQL and Redis, the stand-in push service (tests/push_service.py) and a webhook
receiver (tests/webhook_receiver.py), each its own process; one set per test session."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from realtime import vapid

from .support import Process, RedisServer, Server, Worker, free_port, service_env, wait_until

SECRET = "push-suite-secret-long-enough-for-hs256-signing"
PRIVATE_KEY = vapid.generate_private_key()
PUBLIC_KEY = vapid.public_key_of(PRIVATE_KEY)
SUBJECT = "mailto:push-tests@example.com"


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def call(method: str, url: str, bearer: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


@dataclass
class PushService:
    process: Process
    url: str

    def subscribe(self, name: str, server_key: str = PUBLIC_KEY) -> dict[str, Any]:
        status, subscription = call("POST", f"{self.url}/subscribe/{name}", body={"application_server_key": server_key})
        assert status == 201
        return dict(subscription)

    def script(self, name: str, *answers: tuple[int, dict[str, str]]) -> None:
        assert call("POST", f"{self.url}/script/{name}", body={"answers": [list(a) for a in answers]})[0] == 204

    def received(self, name: str) -> list[dict[str, Any]]:
        status, found = call("GET", f"{self.url}/received/{name}")
        assert status == 200
        return list(found)

    def wait_for(self, name: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.received(name)) >= count, timeout=timeout, what=f"{count} pushes to {name}")
        return self.received(name)


@dataclass
class Receiver:
    """The webhook receiver: `endpoint(name)` is a URL whose deliveries it verifies."""

    process: Process
    url: str

    def endpoint(self, name: str) -> str:
        return f"{self.url}/hook/{name}"

    def knows(self, name: str, secret: str) -> None:
        assert call("POST", f"{self.url}/endpoint/{name}", body={"secret": secret})[0] == 204

    def script(self, name: str, *answers: int) -> None:
        assert call("POST", f"{self.url}/script/{name}", body={"answers": list(answers)})[0] == 204

    def received(self, name: str) -> list[dict[str, Any]]:
        status, found = call("GET", f"{self.url}/received/{name}")
        assert status == 200
        return list(found)

    def wait_for(self, name: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.received(name)) >= count, timeout=timeout, what=f"{count} webhooks to {name}")
        return self.received(name)


@dataclass
class Stack:
    server: Server
    worker: Worker
    push: PushService
    hooks: Receiver
    env: dict[str, str]
    workdir: Path

    def restart_worker(self) -> None:
        self.worker = Worker(self.env, self.workdir, beat=True)


def helper(name: str, module: str, env: dict[str, str], workdir: Path) -> tuple[Process, str]:
    """A helper server process (`python -m <module> PORT`), once it is ready; its URL."""
    port = free_port()
    process = Process(name, [sys.executable, "-m", module, str(port)], env, workdir / f"{name}.log")
    wait_until(lambda: "ready" in process.log() or not process.alive(), what=name)
    if not process.alive():
        raise AssertionError(f"{name} exited:\n{process.log()}")
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[Stack]:
    env = service_env(
        redis_server.url,
        service_db,
        NOTIFIER_JWT_SECRET=SECRET,
        NOTIFIER_VAPID_PRIVATE_KEY=PRIVATE_KEY,
        NOTIFIER_VAPID_SUBJECT=SUBJECT,
        NOTIFIER_OUTBOUND_ALLOW_PRIVATE="1",
        NOTIFIER_SWEEP_SECS="1",
        NOTIFIER_PRESENCE_DEBOUNCE_SECS="1",
        NOTIFIER_DISPATCH_LEASE_SECS="3",  # a killed dispatcher's rows are taken again soon
        NOTIFIER_SERVE_STATIC="1",  # the demo page and /static/notifier-sw.js, for Chromium
    )
    service, service_url = helper("push-service", "tests.push_service", env, workdir)
    receiver, receiver_url = helper("webhook-receiver", "tests.webhook_receiver", env, workdir)
    running = Stack(
        Server(env, workdir),
        Worker(env, workdir, beat=True),
        PushService(service, service_url),
        Receiver(receiver, receiver_url),
        env,
        workdir,
    )
    yield running
    running.worker.stop()
    running.server.stop()
    service.stop()
    receiver.stop()


def subscribed(stack: Stack, user: str, name: str | None = None) -> str:
    """`user` with one browser subscribed (through the end-user API); the stand-in's name for it."""
    name = name or uuid.uuid4().hex[:10]
    status, answer = call(
        "POST", f"{stack.server.http}/api/push/subscriptions", token(user), stack.push.subscribe(name)
    )
    assert status == 201, answer
    return name


def fresh_user() -> str:
    return f"p{uuid.uuid4().hex[:8]}"
