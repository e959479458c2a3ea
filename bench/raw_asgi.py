"""The baseline: a minimal raw ASGI broadcast app, no Django, no Channels.

Every WebSocket client is subscribed on connect. One task per process listens on a Redis
pub/sub channel and writes each message's text, encoded once, to every socket through the
ASGI `send`. POST /api/notify parses a JSON body, PUBLISHes it and answers 202: the raw
publish rate the notify endpoint is compared with. POST /api/tokens mints an HS256 JWT for the
body's `user` and answers 201, with no key check: the raw rate token minting is compared with.

    RAW_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.raw_asgi:app --ws websockets-sansio
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import jwt
from redis import asyncio as aioredis

CHANNEL = "raw-bench"
sockets: set[Any] = set()
state: dict[str, Any] = {}


async def pump() -> None:
    redis = aioredis.from_url(os.environ["RAW_REDIS_URL"])
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    async for message in pubsub.listen():
        if message["type"] == "message":
            event = {"type": "websocket.send", "text": message["data"].decode()}
            for send in list(sockets):
                try:
                    await send(event)
                except Exception:  # noqa: BLE001 - a socket closing mid-broadcast
                    sockets.discard(send)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if "pump" not in state:
        state["pump"] = asyncio.get_running_loop().create_task(pump())
        state["redis"] = aioredis.from_url(os.environ["RAW_REDIS_URL"])
    if scope["type"] == "http":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer = 200, b'{"status":"ok"}'
        if scope["method"] == "POST" and scope["path"] == "/api/tokens":  # a plain app's token minting
            user = json.loads(body)["user"]
            expires_at = int(time.time()) + 3600
            token = jwt.encode({"sub": user, "exp": expires_at}, "raw-bench-secret-long-enough-for-hs256", "HS256")
            status, answer = 201, json.dumps({"token": token, "expires_at": expires_at}).encode()
        elif scope["method"] == "POST":
            await state["redis"].publish(CHANNEL, json.dumps(json.loads(body)))
            status, answer = 202, b'{"id":"0123456789abcdef0123456789abcdef","channels":{}}'
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": answer})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": '{"type":"subscribed","channel":"bench"}'})
        sockets.add(send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            sockets.discard(send)
