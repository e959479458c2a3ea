"""Tokens, the authorizer hook and anonymous-connection rules, without a server process."""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import jwt
import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from api.models import ApiKey
from api.permissions import key_may_grant
from api.serializers import TokenRequestSerializer
from api.tokens import quick_token_attrs
from realtime.authorization import ChannelAuthorizer, Identity
from realtime.codes import CloseCode
from realtime.process import get_hub
from realtime.tokens import (
    InvalidToken,
    TokenExpired,
    decode_connection_token,
    decode_subscription_token,
    mint_connection_token,
    mint_subscription_token,
)

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


@pytest.fixture(autouse=True)
def jwt_secret(settings: Any) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "JWT_SECRET": SECRET}
    channel_layers.backends.pop("default", None)


def test_minted_tokens_round_trip() -> None:
    token, expires_at = mint_connection_token("42", ["private:a*"], expires_in=60)
    claims = decode_connection_token(token)
    assert (claims.user, claims.expires_at) == ("42", expires_at)
    assert claims.grants("private:abc") and not claims.grants("private:b")
    sub_token, _ = mint_subscription_token("42", "private:x")
    assert decode_subscription_token(sub_token).channel == "private:x"


def test_a_non_python_backend_can_sign_its_own() -> None:
    claims = {"sub": "7", "exp": int(time.time()) + 60, "channels": ["private:t"]}
    assert decode_connection_token(jwt.encode(claims, SECRET, algorithm="HS256")).channels == ("private:t",)


def hs512_with_our_secret() -> str:
    with warnings.catch_warnings():  # PyJWT warns that this key is short for HS512
        warnings.simplefilter("ignore")
        return jwt.encode({"sub": "1", "exp": int(time.time()) + 600}, SECRET, algorithm="HS512")


def signed(claims: dict[str, Any], key: str | None = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, key, algorithm=algorithm)


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda: signed({"sub": "1"}, "another-secret-of-adequate-length-123456"),
        lambda: signed({"sub": "1"}, None, algorithm="none"),
        hs512_with_our_secret,
        lambda: jwt.encode({"exp": int(time.time()) + 600}, SECRET, algorithm="HS256"),
        lambda: jwt.encode({"sub": "1"}, SECRET, algorithm="HS256"),
        lambda: signed({"sub": 1}),
        lambda: signed({"sub": "1", "channels": "private:x"}),
        lambda: "x" * 9000,
        lambda: "",
    ],
    ids=["other secret", "alg none", "HS512", "no sub", "no exp", "int sub", "channels not a list", "huge", "empty"],
)
def test_invalid_connection_tokens(make_bad: Any) -> None:
    with pytest.raises(InvalidToken):
        decode_connection_token(make_bad())


def test_expired_tokens() -> None:
    with pytest.raises(TokenExpired):
        decode_connection_token(jwt.encode({"sub": "1", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256"))


@pytest.mark.parametrize(
    ("key_patterns", "requested", "allowed"),
    [
        (["orders.?"], "orders.1", True),  # a name matching a key pattern
        (["orders.?"], "orders.12", False),
        (["orders.?"], "orders.?", True),  # a pattern the key has exactly
        (["orders.?"], "orders.*", False),  # matches `orders.?` as a string, but grants more
        (["orders.*"], "orders.[a-z]*", False),  # narrower, but not one of the key's patterns
        (["*"], "private:team-*", True),  # a key for every channel may grant any pattern
    ],
)
def test_what_a_key_may_put_in_a_minted_token(key_patterns: list[str], requested: str, allowed: bool) -> None:
    assert key_may_grant(ApiKey(channels=key_patterns), requested) is allowed


def test_no_secret_means_no_tokens(settings: Any) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "JWT_SECRET": ""}
    with pytest.raises(InvalidToken):
        decode_connection_token("a.b.c")


class StaffAuthorizer(ChannelAuthorizer):
    """An override of the hook: Django staff may read every private channel."""

    def has_private_access(self, identity: Identity, channel: str) -> bool:
        return bool(identity.django_user is not None and identity.django_user.is_staff)


class FakeUser:
    is_staff = True


@pytest.mark.django_db  # the hook runs through database_sync_to_async: it may use the ORM
async def test_the_permission_hook_can_grant_private_channels() -> None:
    authorizer = StaffAuthorizer()
    assert await authorizer.can_subscribe(Identity("1", django_user=FakeUser()), "private:ops") is None
    refusal = await authorizer.can_subscribe(Identity("2"), "private:ops")
    assert refusal is not None and refusal.code == "forbidden"
    refusal = await ChannelAuthorizer().can_subscribe(Identity("1", django_user=FakeUser()), "private:ops")
    assert refusal is not None  # the default hook grants nothing


async def test_when_anonymous_is_off_sockets_must_authenticate(settings: Any) -> None:
    from notifier.asgi import application

    settings.NOTIFIER = {**settings.NOTIFIER, "ALLOW_ANONYMOUS": False, "HEARTBEAT_SECS": 1, "AUTH_TIMEOUT_SECS": 1}
    ws = WebsocketCommunicator(application, "/ws/")
    await ws.connect()
    assert json.loads(await ws.receive_from(timeout=5))["user"] is None
    await ws.send_json_to({"op": "subscribe", "channel": "news"})
    assert json.loads(await ws.receive_from(timeout=5))["code"] == "forbidden"
    frames = []
    while (message := await ws.receive_output(timeout=10))["type"] != "websocket.close":
        frames.append(message)
    assert message["code"] == CloseCode.FORBIDDEN  # never authenticated within the timeout

    ws = WebsocketCommunicator(application, "/ws/")
    await ws.connect()
    await ws.receive_from(timeout=5)
    token, _ = mint_connection_token("9")
    await ws.send_json_to({"op": "auth", "token": token})
    assert json.loads(await ws.receive_from(timeout=5)) == {"type": "authenticated", "user": "9"}
    await ws.send_json_to({"op": "subscribe", "channel": "news"})
    assert json.loads(await ws.receive_from(timeout=5))["type"] == "subscribed"
    await ws.disconnect()
    await get_hub().stop()


_odd = st.one_of(
    st.sampled_from(["", " 42", "42 ", "a b", "é", "x" * 65, 5, -1, 0, 1.5, True, None, [], "60", 7 * 24 * 3600 + 1]),
    st.text(max_size=4),
)
_token_bodies = st.one_of(
    st.fixed_dictionaries(
        {"user": st.one_of(st.sampled_from(["42", "a@b.c", "x" * 64]), st.integers(0, 99), _odd)},
        optional={
            "expires_in": st.one_of(st.integers(-1, 8 * 24 * 3600), _odd),
            "channels": st.lists(st.sampled_from(["private:a", "x"]), max_size=2),
            "channel": st.just("private:a"),
            "extra": _odd,
        },
    ),
    _odd,
)


@hypothesis_settings(max_examples=500)
@given(_token_bodies)
def test_quick_token_validation_accepts_only_what_the_serializer_accepts_with_the_same_data(body: Any) -> None:
    quick = quick_token_attrs(body)
    if quick is None:
        return  # the serializer decides
    serializer = TokenRequestSerializer(data=body)
    assert serializer.is_valid(), (body, serializer.errors)
    assert dict(serializer.validated_data) == quick


def test_quick_token_validation_takes_ordinary_bodies() -> None:
    for body in [{"user": "42"}, {"user": 7, "expires_in": 600}]:
        assert quick_token_attrs(body) is not None, body
