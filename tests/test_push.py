"""Web Push end to end (DESIGN §11): a Daphne process and a Celery worker (with beat) on
PostgreSQL and Redis push to a stand-in push service (tests/push_service.py, its own process)
that checks the VAPID signature and claims and decrypts each body with the subscription's keys,
as a browser's push service and the browser would."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from realtime import vapid

from . import test_js_client as js
from .offline import PUBLIC_KEY, SECRET, SUBJECT, Stack, call, fresh_user, subscribed, token
from .support import Server, manage, notify, post_json, service_env, wait_until
from .wsclient import Client


def test_the_public_key_is_served_without_auth(stack: Stack) -> None:
    assert call("GET", f"{stack.server.http}/api/push/key") == (200, {"public_key": PUBLIC_KEY})


def test_subscriptions_are_idempotent_listed_and_deleted_by_their_user_only(stack: Stack, api_key: str) -> None:
    user, other = fresh_user(), fresh_user()
    subscription = stack.push.subscribe("sub-api")
    base = f"{stack.server.http}/api/push/subscriptions"
    status, first = call("POST", base, token(user), subscription)
    assert status == 201
    assert call("POST", base, token(user), subscription) == (200, first)
    status, listed = call("GET", base, token(user))
    assert status == 200 and [(s["id"], s["endpoint"]) for s in listed["subscriptions"]] == [
        (first["id"], subscription["endpoint"])
    ]
    assert call("GET", base, token(other)) == (200, {"subscriptions": []})
    assert call("DELETE", f"{base}/{first['id']}", token(other))[0] == 404
    backend = f"{stack.server.http}/api/users/{user}/push/subscriptions"
    for_users = manage(stack.env, "create_api_key", "push-backend", "--scope", "users", "--channels", "user:*")
    backend_key = for_users.strip().splitlines()[-1]
    assert call("GET", backend, backend_key)[1]["subscriptions"][0]["id"] == first["id"]
    assert call("GET", backend, api_key)[0] == 403  # a key without the users scope
    status, again = call("POST", backend, backend_key, subscription)  # the backend registers it for the user
    assert (status, again) == (200, first)
    assert call("DELETE", f"{backend}/{first['id']}", backend_key) == (204, None)
    assert call("GET", backend, backend_key) == (200, {"subscriptions": []})
    status, back = call("POST", base, token(user), subscription)
    assert status == 201
    assert call("DELETE", f"{base}/{back['id']}", token(user)) == (204, None)
    assert call("GET", base, token(user)) == (200, {"subscriptions": []})


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"endpoint": "ftp://push.example.com/x"}, "endpoint"),
        ({"keys": {"p256dh": "AAAA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "p256dh"),
        ({"keys": {"p256dh": None, "auth": "x"}}, "p256dh"),
        ({"surprise": 1}, "unknown field"),
    ],
)
def test_bad_subscriptions_are_refused_with_a_stable_code(stack: Stack, change: dict[str, Any], why: str) -> None:
    body = {**stack.push.subscribe("sub-bad"), **change}
    status, answer = call("POST", f"{stack.server.http}/api/push/subscriptions", token(fresh_user()), body)
    assert status == 400 and answer["code"] == "invalid" and why in json.dumps(answer), answer


def test_an_offline_user_gets_a_signed_encrypted_push(stack: Stack, api_key: str) -> None:
    user = fresh_user()
    name = subscribed(stack, user)
    push = {"title": "Order shipped", "body": "It is on its way", "url": "https://shop.example/o/1", "ttl": 600}
    answer = notify(
        stack.server, api_key, {"user": user, "event": "order.shipped", "push": {**push, "urgency": "high"}}
    )
    (got,) = stack.push.wait_for(name, 1)
    assert got["status"] == 201
    assert got["payload"] == {
        "title": "Order shipped",
        "body": "It is on its way",
        "url": "https://shop.example/o/1",
        "icon": None,
        "tag": answer["id"],
        "id": answer["id"],
        "channel": f"user:{user}",
        "event": "order.shipped",
    }
    assert got["claims"]["aud"] == stack.push.url and got["claims"]["sub"] == SUBJECT
    assert (got["ttl"], got["urgency"]) == ("600", "high")


async def test_an_online_user_gets_no_push_unless_always(stack: Stack, api_key: str) -> None:
    user = fresh_user()
    name = subscribed(stack, user)
    client = await Client.connect(f"{stack.server.ws}?token={token(user)}")
    try:
        await client.subscribe(f"user:{user}")
        notify(stack.server, api_key, {"user": user, "event": "quiet", "push": {"title": "t", "body": "b"}})
        loud = notify(
            stack.server,
            api_key,
            {"user": user, "event": "loud", "push": {"title": "t", "body": "b", "when": "always"}},
        )
        (got,) = stack.push.wait_for(name, 1)
        assert got["payload"]["id"] == loud["id"]
        assert [e["event"] for e in await client.events(2)] == ["quiet", "loud"]  # the live events went
    finally:
        await client.close()
    time.sleep(1.5)  # the quiet one would have been pushed by now
    assert len(stack.push.received(name)) == 1


def test_a_muted_category_is_not_pushed(stack: Stack, api_key: str) -> None:
    user = fresh_user()
    name = subscribed(stack, user)
    prefs = {"categories": {"social": {"push": False}}}
    assert call("PUT", f"{stack.server.http}/api/inbox/preferences", token(user), prefs)[0] == 200
    notify(
        stack.server,
        api_key,
        {"user": user, "event": "like", "category": "social", "push": {"title": "t", "body": "b"}},
    )
    sent = notify(
        stack.server,
        api_key,
        {"user": user, "event": "bill", "category": "billing", "push": {"title": "t", "body": "b"}},
    )
    (got,) = stack.push.wait_for(name, 1)
    assert got["payload"]["id"] == sent["id"]
    time.sleep(1)
    assert len(stack.push.received(name)) == 1


def test_gone_subscriptions_are_deleted_at_once(stack: Stack, api_key: str) -> None:
    user = fresh_user()
    name = subscribed(stack, user)
    stack.push.script(name, (410, {}))
    notify(stack.server, api_key, {"user": user, "event": "e", "push": {"title": "t", "body": "b"}})
    stack.push.wait_for(name, 1)
    wait_until(
        lambda: call("GET", f"{stack.server.http}/api/push/subscriptions", token(user))[1]["subscriptions"] == [],
        what="the subscription deleted",
    )


@pytest.mark.parametrize("first", [(429, {"Retry-After": "1"}), (500, {}), (503, {"Retry-After": "1"})])
def test_a_refused_push_is_retried_and_delivered_once(
    stack: Stack, api_key: str, first: tuple[int, dict[str, str]]
) -> None:
    user = fresh_user()
    name = subscribed(stack, user)
    stack.push.script(name, first)
    sent = notify(stack.server, api_key, {"user": user, "event": "e", "push": {"title": "t", "body": "b"}})
    refused, accepted = stack.push.wait_for(name, 2)
    assert (refused["status"], accepted["status"]) == (first[0], 201)
    assert refused["payload"]["id"] == accepted["payload"]["id"] == sent["id"]
    time.sleep(3)  # two sweeps: nothing sends it again
    assert len(stack.push.received(name)) == 2


@pytest.mark.parametrize("status", [400, 413, 403])
def test_a_rejected_push_is_not_retried(stack: Stack, api_key: str, status: int) -> None:
    user = fresh_user()
    name = subscribed(stack, user)
    stack.push.script(name, (status, {}))
    notify(stack.server, api_key, {"user": user, "event": "e", "push": {"title": "t", "body": "b"}})
    stack.push.wait_for(name, 1)
    time.sleep(3)
    assert [r["status"] for r in stack.push.received(name)] == [status]


def test_a_worker_killed_while_a_retry_waits_delivers_once_after_restart(stack: Stack, api_key: str) -> None:
    user = fresh_user()
    name = subscribed(stack, user)
    stack.push.script(name, (503, {"Retry-After": "4"}))
    notify(stack.server, api_key, {"user": user, "event": "e", "push": {"title": "t", "body": "b"}})
    stack.push.wait_for(name, 1)
    stack.worker.signal(signal.SIGKILL)  # its countdown message for the retry dies with it
    stack.worker.proc.wait()
    stack.restart_worker()
    refused, accepted = stack.push.wait_for(name, 2, timeout=30)
    assert (refused["status"], accepted["status"]) == (503, 201)
    time.sleep(4)
    assert len(stack.push.received(name)) == 2


def test_bad_push_input_gets_a_clear_error(stack: Stack, api_key: str) -> None:
    url = f"{stack.server.http}/api/notify"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"channel": "news", "event": "e", "push": {"title": "t", "body": "b"}}, 400, "user"),
        ({"user": "u1", "event": "e", "push": {"body": "b"}}, 400, "title"),
        ({"user": "u1", "event": "e", "push": {"title": "t", "body": "b", "when": "later"}}, 400, "when"),
        ({"user": "u1", "event": "e", "push": {"title": "t", "body": "b", "ttl": -1}}, 400, "ttl"),
        (
            {
                "user": "u1",
                "event": "e",
                "push": {
                    "title": "t",
                    "body": "雪" * 1000,  # 3,000 bytes in UTF-8
                    "url": "https://e/" + "y" * 990,
                    "icon": "z" * 1000,
                    "tag": "t" * 64,
                },
            },
            413,
            "push payload",
        ),  # noqa: E501
    ]
    for body, status, why in cases:
        got, answer = post_json(url, body, api_key)
        assert got == status and why in json.dumps(answer), (body, answer)


def test_a_delivery_queued_again_is_not_sent_again(stack: Stack, api_key: str, service_db: str) -> None:
    import psycopg
    from celery import Celery

    user = fresh_user()
    name = subscribed(stack, user)
    sent = notify(stack.server, api_key, {"user": user, "event": "e", "push": {"title": "t", "body": "b"}})
    stack.push.wait_for(name, 1)
    with psycopg.connect(service_db) as db:
        (delivery_id,) = db.execute(
            "SELECT id FROM realtime_pushdelivery WHERE event_id = %s", (sent["id"],)
        ).fetchone()
    broker = Celery(broker=stack.env["REDIS_URL"], set_as_current=False)  # not this process's app
    for _ in range(3):  # as a restored message, a sweep and a retry could
        broker.send_task("notifier.push", kwargs={"delivery_id": delivery_id})
    time.sleep(2)
    assert len(stack.push.received(name)) == 1


def test_the_embedded_mode_pushes_from_its_one_process(stack: Stack, workdir: Path) -> None:
    """No Redis, no worker: the embedded mode makes its own key and runs the push tasks in a
    thread of the server process, after the publish was answered."""
    env = service_env(
        None, workdir / "embedded-push.sqlite3", NOTIFIER_JWT_SECRET=SECRET, NOTIFIER_OUTBOUND_ALLOW_PRIVATE="1"
    )
    manage(env, "migrate", "--verbosity", "0")
    key = manage(env, "create_api_key", "embedded-push").strip().splitlines()[-1]
    server = Server(env, workdir)
    try:
        status, answer = call("GET", f"{server.http}/api/push/key")
        assert status == 200 and answer["public_key"] != PUBLIC_KEY
        user, name = fresh_user(), uuid.uuid4().hex[:10]
        subscription = stack.push.subscribe(name, answer["public_key"])
        assert call("POST", f"{server.http}/api/push/subscriptions", token(user), subscription)[0] == 201
        sent = notify(server, key, {"user": user, "event": "e", "push": {"title": "t", "body": "b"}})
        (got,) = stack.push.wait_for(name, 1)
        assert got["status"] == 201 and got["payload"]["id"] == sent["id"]
        assert got["claims"]["sub"] == vapid.EMBEDDED_SUBJECT
    finally:
        server.stop()


@pytest.fixture(scope="module")
def node() -> str:
    return js.require_node()


@pytest.fixture(scope="module")
def chromium(node: str) -> Path:
    return js.require_chromium()


def test_enable_push_in_chromium_registers_the_browser_and_it_gets_pushes(
    stack: Stack, api_key: str, node: str, chromium: Path
) -> None:
    """The demo page's "Enable push" in headless Chromium: the real service worker registration
    and client.push; only the browser's push service is the stand-in's (none is reachable)."""
    user, name = fresh_user(), uuid.uuid4().hex[:10]
    subscription = stack.push.subscribe(name)
    env = {"NOTIFIER_HTTP": stack.server.http, "E2E_TOKEN": token(user), "E2E_SUBSCRIPTION": json.dumps(subscription)}
    script = js.Script(node, "browser-push.mjs", env)
    try:
        result = script.result()
    finally:
        script.close()
    assert result["registeredScope"] == f"{stack.server.http}/static/"
    status, listed = call("GET", f"{stack.server.http}/api/push/subscriptions", token(user))
    assert status == 200 and [s["endpoint"] for s in listed["subscriptions"]] == [subscription["endpoint"]]
    sent = notify(stack.server, api_key, {"user": user, "event": "e", "push": {"title": "From Chromium", "body": "b"}})
    (got,) = stack.push.wait_for(name, 1)
    assert got["payload"]["id"] == sent["id"] and got["payload"]["title"] == "From Chromium"
