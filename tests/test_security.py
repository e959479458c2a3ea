"""Who may listen and publish, tried as an attacker would, through real servers and clients."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets

from .support import RedisServer, Server, manage, notify, post_json, service_env
from .wsclient import Client

pytestmark = pytest.mark.integration

SECRET = "test-jwt-secret-for-the-security-suite"
NAMESPACES = {
    "chat": {"client_publish": True, "presence_events": False},
    "vault": {"public": False, "client_publish": True},
}
LIMITS = {
    "NOTIFIER_JWT_SECRET": SECRET,
    "NOTIFIER_NAMESPACES": json.dumps(NAMESPACES),
    "NOTIFIER_HEARTBEAT_SECS": "1",
    "NOTIFIER_TOKEN_GRACE_SECS": "1",
    "NOTIFIER_MAX_CONNECTIONS_PER_USER": "3",
    "NOTIFIER_MAX_SUBSCRIPTIONS_PER_CONNECTION": "5",
    "NOTIFIER_CLIENT_PUBLISH_PER_SEC": "2",
    "NOTIFIER_PUBLISH_RATE_PER_KEY": "100/m",
}


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[Server]:
    proc = Server(service_env(redis_server.url, service_db, **LIMITS), workdir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def closed_server(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[Server]:
    """A second server with anonymous connections off (the one extra server of this module)."""
    env = service_env(
        redis_server.url,
        service_db,
        NOTIFIER_JWT_SECRET=SECRET,
        NOTIFIER_ALLOW_ANONYMOUS="0",
        NOTIFIER_AUTH_TIMEOUT_SECS="1",
        NOTIFIER_HEARTBEAT_SECS="1",
    )
    proc = Server(env, workdir)
    yield proc
    proc.stop()


def hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():  # PyJWT warns that our secret is short for HS512
        warnings.simplefilter("ignore")
        return jwt.encode(claims, SECRET, algorithm="HS512")


def token(user: str, expires_in: float = 600, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + expires_in), **claims}, secret, algorithm="HS256")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def connect(server: Server, user: str | None = None, **claims: Any) -> Client:
    url = server.ws if user is None else f"{server.ws}?token={token(user, **claims)}"
    return await Client.connect(url)


async def closed_with(url: str, first_frame: dict[str, Any] | None = None) -> int:
    """Connect, optionally send a frame, answer pings, and return the close code the server ends with."""
    async with websockets.connect(url) as ws:
        if first_frame is not None:
            await ws.recv()  # hello
            await ws.send(json.dumps(first_frame))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if frame.get("type") == "ping":
                    await ws.send('{"op": "pong"}')
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def get_json(url: str, key: str | None) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# -- connection authentication ----------------------------------------------------------------


async def test_token_in_query_or_first_frame_authenticates(server: Server) -> None:
    by_query = await connect(server, unique("u"))
    assert by_query.hello["user"] is not None
    await by_query.close()
    anonymous = await connect(server)
    assert anonymous.hello["user"] is None
    reply = await anonymous.request({"op": "auth", "token": token("alice-1"), "ref": 1})
    assert reply == {"type": "authenticated", "user": "alice-1", "ref": 1}
    again = await anonymous.request({"op": "auth", "token": token("mallory")})
    assert again["code"] == "forbidden"  # no switching identity on an authenticated socket
    await anonymous.close()


@pytest.mark.parametrize(
    ("label", "bad_token", "code"),
    [
        ("expired", lambda: token("42", expires_in=-60), 4001),
        ("forged", lambda: token("42", secret="not-our-secret-but-just-as-long-as-ours"), 4500),
        ("alg none", lambda: jwt.encode({"sub": "42", "exp": int(time.time()) + 600}, None, algorithm="none"), 4500),
        ("garbage", lambda: "not.a.jwt", 4500),
        ("no sub", lambda: jwt.encode({"exp": int(time.time()) + 600}, SECRET, algorithm="HS256"), 4500),
        ("no exp", lambda: jwt.encode({"sub": "42"}, SECRET, algorithm="HS256"), 4500),
        ("HS512", lambda: hs512({"sub": "42", "exp": int(time.time()) + 600}), 4500),
        ("subscription token", lambda: token("42", channel="private:x"), 4500),
    ],
)
async def test_bad_tokens_are_refused_with_the_documented_close_code(
    server: Server, label: str, bad_token: Any, code: int
) -> None:
    assert await closed_with(f"{server.ws}?token={bad_token()}") == code, label
    assert await closed_with(server.ws, {"op": "auth", "token": bad_token()}) == code, label


async def test_session_cookie_authenticates(server: Server, service_db: str) -> None:
    script = (
        "from django.contrib.auth.models import User; from django.contrib.sessions.backends.db import SessionStore; "
        f"u = User.objects.create_user('{unique('alice')}'); s = SessionStore(); "
        "s['_auth_user_id'] = str(u.pk); s['_auth_user_backend'] = 'django.contrib.auth.backends.ModelBackend'; "
        "s['_auth_user_hash'] = u.get_session_auth_hash(); s.create(); print(u.pk, s.session_key)"
    )
    user_id, session_key = manage(service_env(None, service_db), "shell", "-c", script).strip().splitlines()[-1].split()
    client = await Client.connect(server.ws, additional_headers={"Cookie": f"sessionid={session_key}"})
    assert client.hello["user"] == user_id
    await client.subscribe(f"user:{user_id}")
    await client.close()
    stranger = await Client.connect(server.ws, additional_headers={"Cookie": "sessionid=forged-session-key"})
    assert stranger.hello["user"] is None
    await stranger.close()


async def test_a_token_expiring_while_connected_ends_the_connection_unless_refreshed(server: Server) -> None:
    user = unique("exp")
    short = f"{server.ws}?token={token(user, expires_in=1)}"
    assert await closed_with(short) == 4001

    refreshed = await Client.connect(short)
    reply = await refreshed.request({"op": "refresh", "token": token(user, expires_in=600)})
    assert reply == {"type": "authenticated", "user": user}
    for _ in range(8):  # 4 s: past the old expiry + grace + a heartbeat, and still open
        await asyncio.sleep(0.5)
        assert (await refreshed.request({"op": "ping"}))["type"] == "pong"
    stolen = await refreshed.request({"op": "refresh", "token": token("someone-else")})
    assert stolen["code"] == "forbidden"
    await refreshed.close()


async def test_a_refresh_ends_the_subscriptions_the_new_token_does_not_allow(server: Server, api_key: str) -> None:
    user = unique("r")
    keep, drop, by_token, news = unique("private:keep-"), unique("private:drop-"), unique("private:st-"), unique("n-")
    client = await connect(server, user, channels=[keep, drop])
    for channel in (keep, drop, news, f"user:{user}"):
        await client.subscribe(channel)
    await client.subscribe(by_token, token=token(user, channel=by_token))  # a grant the refresh does not touch

    reply = await client.request({"op": "refresh", "token": token(user, channels=[keep]), "ref": 9})
    assert reply == {"type": "authenticated", "user": user, "ref": 9}
    refused = await client.recv()
    assert (refused["type"], refused["code"], refused["channel"]) == ("error", "forbidden", drop)
    assert drop in refused["message"]
    assert await client.nothing_within(0.3)  # only the one channel the new token lost

    notify(server, api_key, {"channels": [keep, drop, by_token, news], "event": "after"})
    notify(server, api_key, {"user": user, "event": "mine"})
    received = await client.events(4)
    assert {e["channel"] for e in received} == {keep, by_token, news, f"user:{user}"}
    assert await client.nothing_within(0.5)
    assert (await client.request({"op": "subscribe", "channel": drop}))["code"] == "forbidden"
    await client.close()


async def test_authenticating_moves_presence_from_anonymous_to_the_user(server: Server, api_key: str) -> None:
    room = unique("chat:who-")
    client = await connect(server)
    await client.subscribe(room)
    url = f"{server.http}/api/channels/{room}/presence"
    before = get_json(url, api_key)[1]
    assert (before["users"], before["anonymous_connections"]) == ([], 1)
    user = unique("p")
    assert (await client.request({"op": "auth", "token": token(user)}))["type"] == "authenticated"
    await client.request({"op": "ping"})  # the move is done before the next frame is read
    after = get_json(url, api_key)[1]
    assert (after["users"], after["anonymous_connections"]) == ([{"user": user, "connections": 1}], 0)
    await client.close()
    await asyncio.sleep(0.3)
    gone = get_json(url, api_key)[1]
    assert (gone["users"], gone["total_connections"]) == ([], 0)


async def test_with_anonymous_off_a_socket_must_authenticate(closed_server: Server) -> None:
    async with websockets.connect(closed_server.ws) as ws:
        assert json.loads(await ws.recv())["user"] is None
        await ws.send(json.dumps({"op": "subscribe", "channel": "news", "ref": 1}))
        refused = json.loads(await ws.recv())
        assert (refused["type"], refused["code"], refused["ref"]) == ("error", "forbidden", 1)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:  # answers pings: only the missing `auth` ends it
                if json.loads(await asyncio.wait_for(ws.recv(), 15)).get("type") == "ping":
                    await ws.send('{"op": "pong"}')
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4501

    user = unique("in")
    by_frame = await Client.connect(closed_server.ws)
    assert await by_frame.request({"op": "auth", "token": token(user)}) == {"type": "authenticated", "user": user}
    by_query = await Client.connect(f"{closed_server.ws}?token={token(user)}")
    assert by_query.hello["user"] == user
    for client in (by_frame, by_query):
        await client.subscribe("news")
    for _ in range(6):  # 3 s: past the 1 s auth timeout and two heartbeats, and still open
        await asyncio.sleep(0.5)
        for client in (by_frame, by_query):
            assert (await client.request({"op": "ping"}))["type"] == "pong"
    for client in (by_frame, by_query):
        await client.close()


# -- channel policies -------------------------------------------------------------------------


async def test_personal_channels_belong_to_their_user_only(server: Server, api_key: str) -> None:
    alice, bob = unique("a"), unique("b")
    owner = await connect(server, alice)
    await owner.subscribe(f"user:{alice}")
    intruder = await connect(server, bob)
    anonymous = await connect(server)
    for client in (intruder, anonymous):
        refused = await client.request({"op": "subscribe", "channel": f"user:{alice}", "since": {"offset": 0}})
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        refused = await client.request({"op": "publish", "channel": f"user:{alice}", "event": "x", "data": 1})
        assert refused["code"] == "forbidden"
    notify(server, api_key, {"user": alice, "event": "secret", "data": "for alice"})
    (event,) = await owner.events(1)
    assert event["data"] == "for alice"
    assert await intruder.nothing_within(0.5) and await anonymous.nothing_within(0.1)
    for client in (owner, intruder, anonymous):
        await client.close()


async def test_private_channels_need_a_claim_or_a_subscription_token(server: Server, api_key: str) -> None:
    team = unique("private:team-")
    claimed = await connect(server, "carol", channels=[team])
    await claimed.subscribe(team)
    pattern = await connect(server, "dave", channels=["private:team-*"])
    await pattern.subscribe(team)
    guesser = await connect(server, "eve")
    assert (await guesser.request({"op": "subscribe", "channel": team}))["code"] == "forbidden"
    assert (await guesser.request({"op": "subscribe", "channel": team + "x"}))["code"] == "forbidden"
    wrong_user = token("mallory", channel=team)
    assert (await guesser.request({"op": "subscribe", "channel": team, "token": wrong_user}))["code"] == "forbidden"
    other_channel = token("eve", channel=team + "-other")
    assert (await guesser.request({"op": "subscribe", "channel": team, "token": other_channel}))["code"] == "forbidden"
    expired = token("eve", channel=team, expires_in=-60)
    assert (await guesser.request({"op": "subscribe", "channel": team, "token": expired}))["code"] == "token_expired"
    forged = token("eve", channel=team, secret="a-forged-secret-of-a-respectable-length")
    assert (await guesser.request({"op": "subscribe", "channel": team, "token": forged}))["code"] == "invalid_token"

    notify(server, api_key, {"channel": team, "event": "plans"})
    for client in (claimed, pattern):
        assert (await client.events(1))[0]["event"] == "plans"
    assert await guesser.nothing_within(0.5)
    granted = await guesser.request({"op": "subscribe", "channel": team, "token": token("eve", channel=team)})
    assert granted["type"] == "subscribed"
    for client in (claimed, pattern, guesser):
        await client.close()


async def test_client_publishing_only_where_the_namespace_allows_it(server: Server) -> None:
    room, news = unique("chat:room-"), unique("news-")
    alice, bob = await connect(server, "alice-chat"), await connect(server)
    for client in (alice, bob):
        await client.subscribe(room)
    await alice.send({"op": "publish", "channel": room, "event": "message", "data": {"t": "hi"}, "ref": 5})
    # The event may reach the publisher before its acknowledgement: the two travel separately.
    first, second = await alice.recv(), await alice.recv()
    (published,) = [f for f in (first, second) if f["type"] == "published"]
    assert published["ref"] == 5 and published["offset"] == 1
    (event,) = [f for f in (first, second) if f["type"] == "event"]
    (bobs,) = await bob.events(1)
    for event in (event, bobs):
        assert event["data"] == {"t": "hi"} and event["sender"] == "alice-chat" and event["offset"] == 1
    assert (await alice.request({"op": "publish", "channel": news, "event": "x"}))["code"] == "forbidden"
    vault = unique("vault:")
    assert (await bob.request({"op": "publish", "channel": vault, "event": "x"}))["code"] == "forbidden"
    too_big = await alice.request({"op": "publish", "channel": room, "event": "x", "data": "y" * 70_000})
    assert too_big["code"] == "frame_too_large"
    await alice.close()
    await bob.close()


async def test_client_publishing_is_rate_limited_per_connection(server: Server) -> None:
    room = unique("chat:rate-")
    client = await connect(server)
    for n in range(10):
        await client.send({"op": "publish", "channel": room, "event": "spam", "data": n, "ref": n})
    replies = []
    while len([r for r in replies if r.get("ref") is not None]) < 10:
        replies.append(await client.recv())
    answers = [r for r in replies if r.get("ref") is not None]
    assert {r["type"] for r in answers} == {"published", "error"}
    assert all(r["code"] == "rate_limited" for r in answers if r["type"] == "error")
    assert sum(r["type"] == "published" for r in answers) <= 5  # burst 4 plus what refilled meanwhile
    await client.close()


# -- limits ----------------------------------------------------------------------------------


async def test_subscriptions_per_connection_are_limited(server: Server) -> None:
    client = await connect(server)
    for n in range(5):
        await client.subscribe(unique(f"lim{n}-"))
    assert (await client.request({"op": "subscribe", "channel": unique("one-more-")}))[
        "code"
    ] == "too_many_subscriptions"
    await client.close()


async def test_connections_per_user_are_limited(server: Server) -> None:
    user = unique("busy")
    clients = [await connect(server, user) for _ in range(3)]
    assert await closed_with(f"{server.ws}?token={token(user)}") == 4503
    await clients[0].close()
    await asyncio.sleep(0.3)
    clients.append(await connect(server, user))  # a slot was freed
    for client in clients[1:]:
        await client.close()


def test_too_many_channels_in_one_publish_is_invalid(server: Server, api_key: str) -> None:
    url = f"{server.http}/api/notify"
    channels = [unique("wide-") for _ in range(101)]
    status, body = post_json(url, {"channels": channels, "event": "x"}, api_key)
    assert (status, body["code"]) == (400, "invalid")
    assert "at most 100 target channels" in json.dumps(body)
    status, body = post_json(url, {"channels": channels[:100], "event": "x"}, api_key)
    assert status == 202 and len(body["channels"]) == 100


def test_the_api_docs_page_is_served(server: Server) -> None:
    with urllib.request.urlopen(f"{server.http}/api/docs/", timeout=10) as response:  # noqa: S310
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert "<html" in response.read().decode().lower()


async def test_a_frame_flood_is_refused_then_closed_as_abuse(server: Server) -> None:
    async with websockets.connect(server.ws) as ws:
        await ws.recv()
        for _ in range(200):
            await ws.send('{"op": "ping"}')
        codes = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                codes.append(frame.get("code"))
    assert "rate_limited" in codes
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4502


# -- API keys: scopes, patterns, rate, tokens --------------------------------------------------


def make_key(service_db: str, *args: str) -> str:
    return manage(service_env(None, service_db), "create_api_key", unique("k"), *args).strip().splitlines()[-1]


def test_key_scopes_and_channel_patterns(server: Server, service_db: str) -> None:
    orders_only = make_key(service_db, "--scope", "publish", "--channels", "orders.*")
    url = f"{server.http}/api/notify"
    assert post_json(url, {"channel": "orders.eu", "event": "x"}, orders_only)[0] == 202
    status, body = post_json(url, {"channels": ["orders.eu", "billing"], "event": "x"}, orders_only)
    assert (status, body["code"], body["details"]["channels"]) == (403, "forbidden", ["billing"])
    assert post_json(url, {"user": "42", "event": "x"}, orders_only)[1]["code"] == "forbidden"
    status, body = get_json(f"{server.http}/api/channels/orders.eu/history", orders_only)
    assert (status, body["code"]) == (403, "forbidden")  # no read scope
    assert post_json(f"{server.http}/api/tokens", {"user": "1"}, orders_only)[0] == 403  # no tokens scope

    reader = make_key(service_db, "--scope", "read", "--channels", "orders.*")
    assert get_json(f"{server.http}/api/channels/orders.eu/history", reader)[0] == 200
    assert get_json(f"{server.http}/api/channels/private:x/history", reader)[0] == 403
    assert post_json(url, {"channel": "orders.eu", "event": "x"}, reader)[0] == 403


def test_publish_rate_per_key_answers_429_with_retry_after(server: Server, service_db: str) -> None:
    import urllib.error
    import urllib.request

    key = make_key(service_db)
    events = {"events": [{"channel": unique("rate-"), "event": "x"}] * 100}
    assert post_json(f"{server.http}/api/notify/batch", events, key)[0] == 202
    request = urllib.request.Request(
        f"{server.http}/api/notify",
        data=json.dumps({"channel": "news", "event": "x"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310
    assert refused.value.code == 429
    assert json.loads(refused.value.read())["code"] == "throttled"
    assert int(refused.value.headers["Retry-After"]) >= 0


async def test_tokens_minted_by_the_api_work_and_respect_the_key(server: Server, service_db: str) -> None:
    key = make_key(service_db, "--scope", "tokens", "--channels", "private:team-1*", "--channels", "user:*")
    status, minted = post_json(f"{server.http}/api/tokens", {"user": "77", "channels": ["private:team-1"]}, key)
    assert status == 201 and minted["expires_at"] > time.time()
    client = await Client.connect(f"{server.ws}?token={minted['token']}")
    assert client.hello["user"] == "77"
    await client.subscribe("private:team-1")
    await client.subscribe("user:77")
    status, sub = post_json(f"{server.http}/api/tokens", {"user": "77", "channel": "private:team-12"}, key)
    assert status == 201
    await client.subscribe("private:team-12", token=sub["token"])
    await client.close()
    status, body = post_json(f"{server.http}/api/tokens", {"user": "77", "channels": ["private:other"]}, key)
    assert (status, body["code"]) == (403, "forbidden")
    status, body = post_json(f"{server.http}/api/tokens", {"user": "77", "expires_in": 0}, key)
    assert (status, body["code"]) == (400, "invalid")


async def test_a_minted_token_needs_the_key_to_cover_the_users_personal_channel(
    server: Server, service_db: str
) -> None:
    url, user = f"{server.http}/api/tokens", unique("m")
    orders = make_key(service_db, "--scope", "tokens", "--channels", "orders.*")
    for body in ({"user": user}, {"user": user, "channels": ["orders.eu"]}):
        status, answer = post_json(url, body, orders)
        assert (status, answer["code"], answer["details"]["channels"]) == (403, "forbidden", [f"user:{user}"]), body
    # A subscription token cannot authenticate a connection, so it opens no personal channel.
    assert post_json(url, {"user": user, "channel": "orders.eu"}, orders)[0] == 201
    status, answer = post_json(url, {"user": user, "channel": "news"}, orders)
    assert (status, answer["details"]["channels"]) == (403, ["news"])

    own = make_key(service_db, "--scope", "tokens", "--channels", "orders.*", "--channels", f"user:{user}")
    status, answer = post_json(url, {"user": unique("other")}, own)
    assert (status, answer["code"]) == (403, "forbidden")
    assert post_json(url, {"user": user, "channel": "orders.eu"}, own)[0] == 201
    status, minted = post_json(url, {"user": user, "channels": ["orders.eu"]}, own)
    assert status == 201
    client = await Client.connect(f"{server.ws}?token={minted['token']}")
    assert client.hello["user"] == user
    await client.subscribe(f"user:{user}")
    await client.close()


async def test_a_minted_token_grants_a_pattern_only_if_the_key_has_that_pattern(
    server: Server, service_db: str, api_key: str
) -> None:
    url, user = f"{server.http}/api/tokens", unique("g")
    key = make_key(service_db, "--scope", "tokens", "--channels", "private:team-?", "--channels", "user:*")
    for wider in ("private:team-*", "private:team-[0-9]*", "private:team-12"):
        status, answer = post_json(url, {"user": user, "channels": [wider]}, key)
        assert (status, answer["code"], answer["details"]["channels"]) == (403, "forbidden", [wider]), wider
    assert post_json(url, {"user": user, "channels": ["private:team-1"]}, key)[0] == 201
    status, minted = post_json(url, {"user": user, "channels": ["private:team-?"]}, key)
    assert status == 201
    client = await Client.connect(f"{server.ws}?token={minted['token']}")
    await client.subscribe("private:team-1")
    assert (await client.request({"op": "subscribe", "channel": "private:team-12"}))["code"] == "forbidden"
    await client.close()
    # A key for every channel (`*`, the default) may grant any pattern.
    assert post_json(url, {"user": user, "channels": ["private:team-*"]}, api_key)[0] == 201


TOKEN_REFUSALS: list[tuple[str, Any, int, str]] = [
    # (which key, body, status, code): the server's event-loop route answers as the DRF view does
    ("none", {"user": "42"}, 401, "missing_api_key"),
    ("bad", {"user": "42"}, 401, "invalid_api_key"),
    ("publish-only", {"user": "42"}, 403, "forbidden"),
    ("publish-only", None, 403, "forbidden"),  # the scope is checked before the body is read
    ("tokens", None, 400, "invalid_json"),
    ("tokens", {"user": " 42"}, 400, "invalid"),
    ("tokens", {"user": "42", "extra": 1}, 400, "invalid"),
    ("tokens", {"user": "42", "expires_in": "60"}, 201, ""),  # DRF's IntegerField takes "60"
    ("tokens", {"user": "42", "channels": ["private:a"], "channel": "private:a"}, 400, "invalid"),
    ("tokens", [1], 400, "invalid"),
]


@pytest.fixture(scope="module")
def token_keys(service_db: str) -> dict[str, str | None]:
    return {
        "none": None,
        "bad": "nk_not-a-key",
        "publish-only": make_key(service_db, "--scope", "publish"),
        "tokens": make_key(service_db, "--scope", "tokens"),
    }


@pytest.mark.parametrize(("which", "body", "status", "code"), TOKEN_REFUSALS)
def test_token_minting_answers_every_refusal_with_its_code(
    server: Server, token_keys: dict[str, str | None], which: str, body: Any, status: int, code: str
) -> None:
    keys = token_keys
    raw = b"{not json" if body is None else None
    answer = post_json(f"{server.http}/api/tokens", body, keys[which], raw=raw)
    assert answer[0] == status, answer
    assert (answer[1].get("code", "") if status != 201 else "") == code, answer
    if status == 201:
        assert jwt.decode(answer[1]["token"], options={"verify_signature": False})["sub"] == "42"


def test_tokens_are_minted_while_redis_is_down(service_db: str, workdir: Path, tmp_path: Path) -> None:
    """Minting needs only the key, read from the database as the DRF door did, when the key
    cache cannot ask Redis."""
    redis_server = RedisServer(tmp_path)
    server = Server(service_env(redis_server.url, service_db), workdir, kind="uvicorn")
    try:
        key = make_key(service_db, "--scope", "tokens")
        assert post_json(f"{server.http}/api/tokens", {"user": "42"}, key)[0] == 201
        redis_server.stop()
        status, minted = post_json(f"{server.http}/api/tokens", {"user": "43"}, key)
        assert status == 201 and jwt.decode(minted["token"], options={"verify_signature": False})["sub"] == "43"
        assert post_json(f"{server.http}/api/tokens", {"user": "43"}, "nk_not-a-key")[0] == 401
    finally:
        server.stop()
        redis_server.stop()
