"""Webhooks to the backend (DESIGN §11), end to end: endpoints managed over the API, deliveries
sent by a real Celery worker to a receiver process that verifies each with the
`standardwebhooks` library, retried with the same webhook-id until a 2xx."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import pytest

from .offline import Stack, call, fresh_user, subscribed, token
from .support import Server, manage, notify, wait_until
from .wsclient import Client


@pytest.fixture(scope="module")
def hooks_key(stack: Stack) -> str:
    return str(manage(stack.env, "create_api_key", "webhooks-tests", "--scope", "webhooks").strip().splitlines()[-1])


def endpoint(stack: Stack, key: str, events: list[str]) -> tuple[str, dict[str, Any]]:
    """A new endpoint at the receiver for `events`; its receiver name and the create answer."""
    name = uuid.uuid4().hex[:10]
    status, created = call(
        "POST", f"{stack.server.http}/api/webhooks", key, {"url": stack.hooks.endpoint(name), "events": events}
    )
    assert status == 201, created
    stack.hooks.knows(name, created["secret"])
    return name, created


def test_endpoints_are_created_listed_rotated_and_deleted(stack: Stack, hooks_key: str, api_key: str) -> None:
    base = f"{stack.server.http}/api/webhooks"
    name, created = endpoint(stack, hooks_key, ["inbox.read", "push.failed"])
    assert created["secret"].startswith("whsec_") and created["events"] == ["inbox.read", "push.failed"]
    status, listed = call("GET", base, hooks_key)
    mine = [w for w in listed["webhooks"] if w["id"] == created["id"]]
    assert status == 200 and len(mine) == 1 and "secret" not in mine[0] and mine[0]["disabled"] is False
    status, rotated = call("POST", f"{base}/{created['id']}/rotate", hooks_key)
    assert status == 200 and rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert call("GET", base, api_key)[0] == 403  # the default scopes do not include webhooks
    assert call("DELETE", f"{base}/{created['id']}", hooks_key) == (204, None)
    assert call("DELETE", f"{base}/{created['id']}", hooks_key)[0] == 404
    assert call("POST", f"{base}/{created['id']}/rotate", hooks_key)[0] == 404


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"url": "ftp://hooks.example.com/x", "events": ["inbox.read"]}, "url"),
        ({"url": "https://hooks.example.com/x", "events": ["inbox.maybe"]}, "events"),
        ({"url": "https://hooks.example.com/x", "events": []}, "events"),
        ({"url": "https://hooks.example.com/x"}, "events"),
        ({"url": "https://hooks.example.com/x", "events": ["inbox.read"], "extra": 1}, "extra"),
    ],
)
def test_bad_endpoints_are_refused_with_a_stable_code(
    stack: Stack, hooks_key: str, body: dict[str, Any], why: str
) -> None:
    status, answer = call("POST", f"{stack.server.http}/api/webhooks", hooks_key, body)
    assert status == 400 and answer["code"] == "invalid" and why in str(answer), answer


def test_inbox_read_reaches_the_backend_signed(stack: Stack, hooks_key: str, api_key: str) -> None:
    name, _ = endpoint(stack, hooks_key, ["inbox.read"])
    user = fresh_user()
    stored = notify(stack.server, api_key, {"user": user, "event": "e", "inbox": True})["inbox"][user]
    marked = call("POST", f"{stack.server.http}/api/inbox/mark", token(user), {"ids": [stored], "as": "read"})
    assert marked[0] == 200
    assert (
        call("POST", f"{stack.server.http}/api/inbox/mark", token(user), {"all": True, "as": "read"})[0] == 200
    )  # none left
    assert call("POST", f"{stack.server.http}/api/inbox/mark", token(user), {"ids": [stored], "as": "unread"})[0] == 200
    assert call("POST", f"{stack.server.http}/api/inbox/mark", token(user), {"all": True, "as": "read"})[0] == 200
    first, second = stack.hooks.wait_for(name, 2)
    assert first["verified"] and second["verified"]
    assert first["body"]["type"] == "inbox.read" and first["body"]["data"] == {"user": user, "ids": [stored]}
    assert second["body"]["data"] == {"user": user, "all": True}
    assert first["id"].startswith("msg_") and first["id"] != second["id"]
    time.sleep(1)
    assert len(stack.hooks.received(name)) == 2  # a mark that changed nothing sends nothing


def test_a_failed_delivery_is_retried_with_the_same_webhook_id(stack: Stack, hooks_key: str, api_key: str) -> None:
    name, _ = endpoint(stack, hooks_key, ["inbox.read"])
    stack.hooks.script(name, 500, 503)
    user = fresh_user()
    stored = notify(stack.server, api_key, {"user": user, "event": "e", "inbox": True})["inbox"][user]
    assert call("POST", f"{stack.server.http}/api/inbox/mark", token(user), {"ids": [stored], "as": "read"})[0] == 200
    attempts = stack.hooks.wait_for(name, 3, timeout=30)
    assert [a["status"] for a in attempts] == [500, 503, 200]
    assert len({a["id"] for a in attempts}) == 1 and all(a["verified"] for a in attempts)
    time.sleep(3)  # two sweeps: nothing sends it again
    assert len(stack.hooks.received(name)) == 3


def test_a_push_given_up_on_is_a_push_failed_webhook(stack: Stack, hooks_key: str, api_key: str) -> None:
    name, _ = endpoint(stack, hooks_key, ["push.failed"])
    user = fresh_user()
    browser = subscribed(stack, user)
    stack.push.script(browser, (400, {}))
    notify(stack.server, api_key, {"user": user, "event": "e", "push": {"title": "t", "body": "b"}})
    (hook,) = stack.hooks.wait_for(name, 1)
    assert hook["verified"] and hook["body"]["type"] == "push.failed"
    data = hook["body"]["data"]
    assert data["user"] == user and data["status"] == 400 and isinstance(data["subscription"], int)


def test_an_endpoint_gets_only_the_events_it_asked_for(stack: Stack, hooks_key: str, api_key: str) -> None:
    pushes_only, _ = endpoint(stack, hooks_key, ["push.failed"])
    reads, _ = endpoint(stack, hooks_key, ["inbox.read"])
    user = fresh_user()
    stored = notify(stack.server, api_key, {"user": user, "event": "e", "inbox": True})["inbox"][user]
    assert call("POST", f"{stack.server.http}/api/inbox/mark", token(user), {"ids": [stored], "as": "read"})[0] == 200
    stack.hooks.wait_for(reads, 1)
    time.sleep(1)
    assert stack.hooks.received(pushes_only) == []


def about(stack: Stack, name: str, count: int, timeout: float = 20, **data: str) -> list[dict[str, Any]]:
    """The webhooks whose data has `data` (the sweep also tells of other tests' users and
    channels, whose connections ended with their processes), once there are `count`."""

    def mine() -> list[dict[str, Any]]:
        return [h for h in stack.hooks.received(name) if data.items() <= h["body"]["data"].items()]

    wait_until(lambda: len(mine()) >= count, timeout=timeout, what=f"{count} webhooks about {data}")
    return mine()


async def test_presence_online_and_offline_once_and_a_reload_is_neither(stack: Stack, hooks_key: str) -> None:
    name, _ = endpoint(stack, hooks_key, ["presence.online", "presence.offline"])
    user = fresh_user()
    url = f"{stack.server.ws}?token={token(user)}"
    tab = await Client.connect(url)
    (online,) = about(stack, name, 1, user=user)
    assert online["verified"] and online["body"]["type"] == "presence.online"
    second = await Client.connect(url)  # another tab: already online
    await tab.close()
    tab = await Client.connect(url)  # a reload of the first
    await second.close()
    await tab.close()
    _, offline = about(stack, name, 2, user=user)
    assert offline["verified"] and offline["body"]["type"] == "presence.offline"
    await asyncio.sleep(2.5)  # past the debounce twice: nothing more
    assert [h["body"]["type"] for h in about(stack, name, 2, user=user)] == ["presence.online", "presence.offline"]


def types(hooks: list[dict[str, Any]]) -> list[str]:
    assert all(h["verified"] for h in hooks)
    return [h["body"]["type"] for h in hooks]


async def test_channel_occupied_and_vacated_once_across_processes(stack: Stack, hooks_key: str) -> None:
    name, _ = endpoint(stack, hooks_key, ["channel.occupied", "channel.vacated"])
    user = fresh_user()
    channel = f"user:{user}"
    other = Server(stack.env, stack.workdir)
    try:
        tab = await Client.connect(f"{stack.server.ws}?token={token(user)}")
        await tab.subscribe(channel)
        assert types(about(stack, name, 1, channel=channel)) == ["channel.occupied"]
        elsewhere = await Client.connect(f"{other.ws}?token={token(user)}")
        await elsewhere.subscribe(channel)  # a second process: already occupied
        await tab.close()  # one process left: still occupied
        tab = await Client.connect(f"{stack.server.ws}?token={token(user)}")  # a reload
        await tab.subscribe(channel)
        await elsewhere.close()
        assert (await tab.request({"op": "unsubscribe", "channel": channel}))["type"] == "unsubscribed"
        await tab.subscribe(channel)  # back within the debounce: not vacated
        await asyncio.sleep(2.5)  # twice the debounce
        assert types(about(stack, name, 1, channel=channel)) == ["channel.occupied"]
        await tab.close()
        assert types(about(stack, name, 2, channel=channel)) == ["channel.occupied", "channel.vacated"]
        await asyncio.sleep(2.5)
        assert len(about(stack, name, 2, channel=channel)) == 2
    finally:
        other.stop()


async def test_users_and_channels_whose_only_server_died_go_offline_and_vacated_through_the_sweep(
    stack: Stack, hooks_key: str
) -> None:
    name, _ = endpoint(stack, hooks_key, ["presence.offline", "channel.vacated"])
    user = fresh_user()
    doomed = Server({**stack.env, "NOTIFIER_PRESENCE_TTL_SECS": "2"}, stack.workdir)
    try:
        tab = await Client.connect(f"{doomed.ws}?token={token(user)}")
        await tab.subscribe(f"user:{user}")
        await asyncio.sleep(1)  # the channel is counted off the subscribe path
        doomed.signal(signal.SIGKILL)
        doomed.proc.wait()
        assert types(about(stack, name, 1, timeout=30, user=user)) == ["presence.offline"]
        assert types(about(stack, name, 1, timeout=30, channel=f"user:{user}")) == ["channel.vacated"]
    finally:
        doomed.stop()
