"""SIGTERM on a server process: its clients get 4000, move to the other process, lose nothing."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import websockets

from .support import RedisServer, Server, post_json, service_env
from .test_operations import ProcfileServer, get_text, sample
from .test_security import get_json
from .wsclient import Client, follow

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["uvicorn", "daphne"])
async def test_sigterm_closes_with_4000_and_clients_recover_elsewhere(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str, kind: str
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


def open_silent_websocket(port: int) -> socket.socket:
    """A WebSocket that completes its handshake, then never reads or answers a close: the
    server's drain waits for it (up to DRAIN_TIMEOUT_SECS)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


async def test_readyz_answers_draining_once_sigterm_arrives(
    redis_server: RedisServer, service_db: str, workdir: Path
) -> None:
    server = ProcfileServer(service_env(redis_server.url, service_db), workdir)
    sock = open_silent_websocket(server.port)
    try:
        assert get_json(f"{server.http}/readyz", None)[0] == 200
        server.signal(signal.SIGTERM)
        deadline = time.monotonic() + 4  # well inside the 5 s the drain waits for the socket
        while (answer := get_json(f"{server.http}/readyz", None))[0] == 200:
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.05)
        status, body = answer
        assert (status, body["code"], body["details"]["failing"]) == (503, "not_ready", ["draining"]), answer
        assert await asyncio.to_thread(server.proc.wait, 20) is not None
    finally:
        sock.close()
        server.stop()


async def test_sigterm_flushes_the_last_metrics(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    """Counts from the last second before SIGTERM reach Redis, and the leaving process's gauges
    go at once (processes flush only once a second otherwise)."""
    env = service_env(redis_server.url, service_db, NOTIFIER_REDIS_PREFIX=f"s{uuid.uuid4().hex[:6]}")
    leaving, staying = ProcfileServer(env, workdir), ProcfileServer(env, workdir)
    channel = f"flush.{uuid.uuid4().hex[:8]}"
    try:
        clients = [await Client.connect(leaving.ws) for _ in range(3)]
        for client in clients:
            await client.subscribe(channel)
        await asyncio.sleep(1.5)  # the subscribe-time counts and gauges are flushed
        status, _ = post_json(
            f"{staying.http}/api/notify/batch",
            {"events": [{"channel": channel, "event": "last", "data": n} for n in range(5)]},
            api_key,
        )
        assert status == 202
        for client in clients:
            await client.events(5)
        leaving.signal(signal.SIGTERM)  # within the second before the next periodic flush
        for client in clients:
            with pytest.raises(websockets.ConnectionClosed):
                await client.recv()
        assert await asyncio.to_thread(leaving.proc.wait, 20) is not None
        text = get_text(f"{staying.http}/metrics")[1]
        assert sample(text, "notifier_frames_delivered_total") == 15, text
        assert sample(text, "notifier_open_connections") == 0, text
        assert sample(text, "notifier_subscriptions") == 0, text
    finally:
        leaving.stop()
        staying.stop()
