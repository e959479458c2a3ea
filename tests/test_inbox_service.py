"""The inbox across real server processes (Daphne) on PostgreSQL and Redis: notifications stored
while the user is offline are listed once they connect, and a change made through one process
reaches the user's sockets on both as one `inbox.changed` event."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from .support import RedisServer, Server, notify, post_json, service_env
from .wsclient import Client

SECRET = "inbox-suite-secret-long-enough-for-hs256-signing"


@pytest.fixture(scope="module")
def inbox_servers(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[tuple[Server, Server]]:
    env = service_env(redis_server.url, service_db, NOTIFIER_JWT_SECRET=SECRET)
    first, second = Server(env, workdir), Server(env, workdir)
    yield first, second
    first.stop()
    second.stop()


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def get_json(url: str, bearer: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_stored_while_offline_listed_after_connecting_and_changes_reach_every_socket(
    inbox_servers: tuple[Server, Server], api_key: str
) -> None:
    first, second = inbox_servers
    user = f"u{uuid.uuid4().hex[:8]}"
    ids = [notify(first, api_key, {"user": user, "event": f"n{i}", "inbox": True})["inbox"][user] for i in range(3)]

    status, listed = get_json(f"{second.http}/api/inbox", token(user))
    assert status == 200 and [n["id"] for n in listed["notifications"]] == ids[::-1]
    assert listed["counts"] == {"unread": 3, "unseen": 3, "total": 3}

    tabs = [await Client.connect(f"{server.ws}?token={token(user)}") for server in inbox_servers]
    for tab in tabs:
        await tab.subscribe(f"user:{user}")
    status, answer = post_json(f"{first.http}/api/inbox/mark", {"ids": [ids[0]], "as": "read"}, token(user))
    assert (status, answer["updated"]) == (200, 1)
    for tab in tabs:
        (event,) = await tab.events(1)
        assert event["event"] == "inbox.changed"
        assert event["data"] == {
            "action": "marked",
            "ids": [ids[0]],
            "all": False,
            "as": "read",
            "counts": {"unread": 2, "unseen": 2, "total": 3},
        }
    notify(second, api_key, {"user": user, "event": "n3", "inbox": True})
    for tab in tabs:
        added, changed = await tab.events(2)
        assert added["event"] == "n3" and changed["event"] == "inbox.changed"
        assert changed["data"]["action"] == "added" and changed["data"]["counts"]["unread"] == 3
        await tab.close()


def test_the_event_loop_door_refuses_as_the_api_does(inbox_servers: tuple[Server, Server]) -> None:
    """GET /api/inbox(/counts) with a token are answered before Django: same codes, same checks."""
    server = inbox_servers[0]
    assert get_json(f"{server.http}/api/inbox/counts", "not-a-token")[1]["code"] == "invalid_token"
    expired = jwt.encode({"sub": "x", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    assert get_json(f"{server.http}/api/inbox", expired) == (
        401,
        {"code": "token_expired", "message": "connection token expired", "details": {}},
    )
    for query in ("status=new", "limit=1000", "limit=0", "cursor=garbage!", "category=Bad"):
        status, answer = get_json(f"{server.http}/api/inbox?{query}", token("x"))
        assert (status, answer["code"]) == (400, "invalid"), query
    status, answer = get_json(f"{server.http}/api/inbox?limit=1", token("nobody-yet"))
    assert (status, answer) == (
        200,
        {"notifications": [], "next": None, "counts": {"unread": 0, "unseen": 0, "total": 0}},
    )
