"""SIGTERM on a server process: its clients get 4000, move to the other process, lose nothing."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from .support import RedisServer, Server, post_json, service_env
from .wsclient import follow

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["uvicorn", "daphne"])
async def test_sigterm_closes_with_4000_and_clients_recover_elsewhere(
    redis_server: RedisServer, service_db: Path, workdir: Path, api_key: str, kind: str
) -> None:
    env = service_env(redis_server.url, service_db)
    leaving, staying = Server(env, workdir, kind=kind), Server(env, workdir, kind="uvicorn")
    channel, total = f"term.{uuid.uuid4().hex[:8]}", 200
    received: dict[int, list[dict[str, Any]]] = {n: [] for n in range(4)}
    close_codes: list[int] = []

    try:
        followers = [
            asyncio.create_task(
                follow(channel, (leaving if n < 2 else staying).ws, staying.ws, total, received[n], close_codes)
            )
            for n in range(4)
        ]
        await asyncio.sleep(0.5)
        for start in range(0, total, 10):
            events = [{"channel": channel, "event": "tick", "data": n} for n in range(start, start + 10)]
            status, answer = await asyncio.to_thread(
                post_json, f"{staying.http}/api/notify/batch", {"events": events}, api_key
            )
            assert status == 202, answer
            if start == 80:
                leaving.signal(signal.SIGTERM)
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*followers), 60)
        assert await asyncio.to_thread(leaving.proc.wait, 20) is not None  # it exited by itself
    finally:
        leaving.stop()
        staying.stop()
    assert close_codes == [4000, 4000]
    for events in received.values():
        assert [e["offset"] for e in events] == list(range(1, total + 1))
