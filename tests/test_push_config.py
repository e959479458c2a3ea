"""Web Push configuration (realtime/vapid.py): without a key, production says so clearly; the
embedded mode makes one key per checkout and keeps it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from api.models import ApiKey
from realtime import vapid

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def production(settings: Any) -> None:
    settings.EMBEDDED = False
    settings.NOTIFIER = {**settings.NOTIFIER, "VAPID_PRIVATE_KEY": "", "VAPID_SUBJECT": ""}


def test_without_a_key_the_public_key_is_a_clear_503(production: None) -> None:
    response = Client().get("/api/push/key")
    assert response.status_code == 503
    assert response.json()["code"] == "push_not_configured"
    assert "NOTIFIER_VAPID_PRIVATE_KEY" in response.json()["message"]


def test_without_a_key_a_publish_with_push_is_refused_and_nothing_is_published(production: None) -> None:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiKey.create_key('push-config')[1]}")
    response = api.post("/api/notify", {"user": "u1", "event": "e", "push": {"title": "t", "body": "b"}}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid" and "NOTIFIER_VAPID_PRIVATE_KEY" in response.json()["message"]


@pytest.mark.parametrize("key", ["not base64!", "AAAA", vapid.b64url(b"x" * 33)])
def test_a_malformed_key_names_the_setting(settings: Any, key: str) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "VAPID_PRIVATE_KEY": key}
    with pytest.raises(vapid.NotConfigured, match="NOTIFIER_VAPID_PRIVATE_KEY"):
        vapid.private_key()


def test_a_generated_key_round_trips_to_its_public_key() -> None:
    key = vapid.generate_private_key()
    public = vapid.b64url_decode(vapid.public_key_of(key))
    assert len(vapid.b64url_decode(key)) == 32 and len(public) == 65 and public[0] == 4


def test_the_embedded_mode_makes_one_key_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / ".dev-vapid-key"
    first = vapid._embedded_key(path)
    assert vapid._embedded_key(path) == first and path.stat().st_mode & 0o777 == 0o600
    vapid.public_key_of(first)  # a usable key


def test_the_vapid_header_is_a_valid_es256_jwt_signed_once_per_origin_for_an_hour(settings: Any) -> None:
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = vapid.generate_private_key()
    settings.NOTIFIER = {**settings.NOTIFIER, "VAPID_PRIVATE_KEY": key, "VAPID_SUBJECT": "mailto:ops@example.com"}
    first = vapid.authorization("https://push.example.com/send/a")
    assert vapid.authorization("https://push.example.com/send/b") == first  # same push service: reused
    other = vapid.authorization("https://updates.push.services.mozilla.com/wpush/v2/x")
    assert other != first
    scheme, params = first.split(" ", 1)
    fields = dict(part.split("=", 1) for part in params.split(","))
    assert scheme == "vapid" and fields["k"] == vapid.public_key_of(key)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), vapid.b64url_decode(fields["k"]))
    claims = jwt.decode(fields["t"], public, algorithms=["ES256"], audience="https://push.example.com")
    assert claims["sub"] == "mailto:ops@example.com"
    assert time.time() + 11 * 3600 < claims["exp"] <= time.time() + 24 * 3600


@pytest.mark.parametrize(
    "endpoint", ["http://push.example.com/x", "https://127.0.0.1/x", "https://10.0.0.8/x", "https://[::1]/x"]
)
def test_by_default_a_subscription_to_a_private_or_plain_http_endpoint_is_refused(endpoint: str) -> None:
    from realtime.tokens import mint_connection_token

    user = APIClient()
    user.credentials(HTTP_AUTHORIZATION=f"Bearer {mint_connection_token('u7')[0]}")
    keys = {"p256dh": vapid.public_key_of(vapid.generate_private_key()), "auth": vapid.b64url(b"0" * 16)}
    response = user.post("/api/push/subscriptions", {"endpoint": endpoint, "keys": keys}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid", response.json()
    assert "endpoint" in response.json()["message"]
