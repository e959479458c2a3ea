"""The Web Push scenario of `make bench` (issue 14): pushes per second one Celery worker sends.

Against the tests' stand-in push service (tests/push_service.py, its own process: it checks
each VAPID signature and decrypts each body, as a push service and a browser would), on a
PostgreSQL database of the run's own. USERS users each register one browser; one batch
publish per 100 of them queues one push each (`when: "always"`); then one worker
(`--concurrency 2`, the production unit's) starts and sends them. The rate is counted by the
stand-in, from the first push it accepted to the last.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt

from realtime import vapid

from .inbox import postgres_database
from .services import BenchError, Process, Worker, free_port, manage, post_json, service_env, wait_until

if TYPE_CHECKING:
    from .run import Bench

USERS = 1000
JWT_SECRET = "bench-push-secret-long-enough-for-hs256"  # noqa: S105 - a throwaway local run


def _call(url: str, body: Any = None, bearer: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")  # noqa: S310
    request.add_header("Content-Type", "application/json")
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"null")


def run(bench: Bench, Row: Any, fmt: Callable[..., str]) -> None:  # noqa: N803 - bench.run's Row class
    users = 50 if bench.smoke else USERS
    private_key = vapid.generate_private_key()
    public_key = vapid.public_key_of(private_key)
    with postgres_database(f"notifier_bench_push_{os.getpid()}") as url:
        extra = {
            "DATABASE_URL": url,
            "NOTIFIER_JWT_SECRET": JWT_SECRET,
            "NOTIFIER_VAPID_PRIVATE_KEY": private_key,
            "NOTIFIER_VAPID_SUBJECT": "mailto:bench@example.com",
            "NOTIFIER_OUTBOUND_ALLOW_PRIVATE": "1",
        }
        env = {**service_env(bench.redis.url, bench.db), **extra}
        manage(env, "migrate", "--verbosity", "0")
        key = manage(env, "create_api_key", "bench-push").strip().splitlines()[-1]
        port = free_port()
        argv = [sys.executable, "-m", "tests.push_service", str(port)]
        service = Process("push-service", argv, env, bench.workdir / "push-service.log")
        stand_in = f"http://127.0.0.1:{port}"
        worker: Worker | None = None
        try:
            wait_until(lambda: "ready" in service.log_path.read_text(), "the stand-in push service")
            with bench.servers("uvicorn", 1, **extra) as (server,):
                for n in range(users):
                    user = f"b{n}"
                    subscription = _call(f"{stand_in}/subscribe/{user}", {"application_server_key": public_key})
                    token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256")
                    _call(f"{server.http}/api/push/subscriptions", subscription, token)
                push = {"title": "Bench", "body": "a push", "when": "always"}
                for first in range(0, users, 100):
                    events = [
                        {"user": f"b{n}", "event": "bench", "push": push} for n in range(first, min(first + 100, users))
                    ]
                    status, answer = post_json(f"{server.http}/api/notify/batch", {"events": events}, key)
                    if status != 202:
                        raise BenchError(f"batch publish: {status} {answer}")
                worker = Worker(env, bench.workdir, concurrency=2)
                wait_until(lambda: _call(f"{stand_in}/stats")["accepted"] >= users, "every push", timeout=600)
                stats = _call(f"{stand_in}/stats")
        finally:
            if worker is not None:
                worker.stop()
            service.stop()
    secs = max(stats["last_at"] - stats["first_at"], 1e-9)
    rate = (stats["accepted"] - 1) / secs
    bench.add(
        Row(
            "push",
            f"Web Push: {users:,} pushes (one per user), one worker --concurrency 2, stand-in push service",
            fmt(rate, "pushes/s"),
            f"{stats['accepted']:,} accepted in {secs:.1f} s (VAPID-signed, aes128gcm, each checked and decrypted)",
            users - int(stats["accepted"]),
            data={"accepted": stats["accepted"], "seconds": secs},
        )
    )
