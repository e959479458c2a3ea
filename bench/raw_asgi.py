"""The baseline: a minimal raw ASGI broadcast app, no Django, no Channels.

Every WebSocket client is subscribed on connect: to everything, or with `?user=<id>` to that
user's events only (the personal shape, routed per socket as notifier routes `user:<id>`).
One task per process listens on Redis pub/sub and writes each message's text, encoded once,
to every socket (or the user's) through the ASGI `send`. POST /api/notify parses a JSON
body, PUBLISHes it and answers 202: the raw publish rate the notify endpoint is compared
with. POST /api/tokens mints an HS256 JWT for the body's `user` and answers 201, with no key
check: the raw rate token minting is compared with.

    RAW_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.raw_asgi:app --ws websockets-sansio
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

import jwt
from redis import asyncio as aioredis

CHANNEL = "raw-bench"
# "<user> <frame>": to that user's sockets only. Only this process publishes to it (from its
# POST /api/notify), so it is this process's own: comparators running side by side (the soak)
# on one Redis must not read each other's events.
PERSONAL = f"raw-bench-personal-{os.getpid()}"
sockets: set[Any] = set()
by_user: dict[str, set[Any]] = {}
state: dict[str, Any] = {}


async def pump() -> None:
    redis = aioredis.from_url(os.environ["RAW_REDIS_URL"])
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL, PERSONAL)
    async for message in pubsub.listen():
        if message["type"] != "message":
            continue
        text = message["data"].decode()
        targets: Any = sockets
        if message["channel"] == PERSONAL.encode():
            user, text = text.split(" ", 1)
            targets = by_user.get(user, ())
        event = {"type": "websocket.send", "text": text}
        for send in list(targets):
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
            parsed = json.loads(body)
            if "user" in parsed:  # the personal shape: a notifier-like frame to one user's sockets
                frame = json.dumps(
                    {"type": "event", "channel": f"user:{parsed['user']}", "offset": 0, **parsed}, separators=(",", ":")
                )
                await state["redis"].publish(PERSONAL, f"{parsed['user']} {frame}")
            else:
                await state["redis"].publish(CHANNEL, json.dumps(parsed))
            status, answer = 202, b'{"id":"0123456789abcdef0123456789abcdef","channels":{}}'
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": answer})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        user = parse_qs(scope.get("query_string", b"").decode()).get("user", [None])[0]
        await send({"type": "websocket.send", "text": '{"type":"subscribed","channel":"bench"}'})
        mine = sockets if user is None else by_user.setdefault(user, set())
        mine.add(send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            mine.discard(send)
