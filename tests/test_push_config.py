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
