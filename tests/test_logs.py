"""Structured logs: JSON lines with connection ids, and no token or API key in any line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
import websockets

from .support import RedisServer, Server, post_json, service_env

pytestmark = pytest.mark.integration

SECRET = "logs-suite-secret-long-enough-for-hs256-signing"


async def test_json_logs_carry_connection_ids_and_never_secrets(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    env = service_env(redis_server.url, service_db, NOTIFIER_LOG_FORMAT="json", NOTIFIER_JWT_SECRET=SECRET)
    server = Server(env, workdir, kind="uvicorn")
    forged = jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, "a-different-secret-of-sufficient-length-x")
    try:
        async with websockets.connect(f"{server.ws}?token={forged}") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
        assert post_json(f"{server.http}/api/notify", {"channel": "news", "event": "x"}, "nk_" + "z" * 40)[0] == 401
        post_json(f"{server.http}/api/notify", {"channel": "news", "event": "x"}, api_key)
        time.sleep(0.5)
        log = server.log()
    finally:
        server.stop()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records, log
    refused = [r for r in records if r["message"].startswith("token refused")]
    assert refused and refused[0]["connection"] and refused[0]["level"] == "INFO"
    assert {"ts", "level", "logger", "message"} <= set(records[0])
    # No access line per connection (uvicorn's "[accepted]", websockets' "connection open").
    assert not [r for r in records if "[accepted]" in r["message"] or r["message"] == "connection open"]
    for secret in (forged, api_key, "z" * 40, forged.split(".")[2]):
        assert secret not in log
