"""The HTTP API in the embedded mode (in-process history and layer), through DRF's test client."""

from __future__ import annotations

from typing import Any

import pytest
from channels.layers import channel_layers
from rest_framework.test import APIClient

from api.models import ApiKey, hash_key

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_layer() -> None:
    channel_layers.backends.pop("default", None)


@pytest.fixture
def key() -> str:
    return ApiKey.create_key("unit")[1]


@pytest.fixture
def client(key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return api


def post(client: APIClient, body: Any, path: str = "/api/notify") -> tuple[int, Any]:
    response = client.post(path, body, format="json")
    return response.status_code, response.json()


def test_keys_are_stored_hashed(key: str) -> None:
    record = ApiKey.objects.get()
    assert record.key_hash == hash_key(key) and key not in (record.key_hash, record.prefix)
    assert key.startswith(record.prefix)


def test_notify_answers_202_with_offsets(client: APIClient) -> None:
    status, body = post(client, {"channel": "api.a", "event": "e", "data": [1, 2]})
    assert status == 202
    assert set(body) == {"id", "channels"}
    position = body["channels"]["api.a"]
    assert position["offset"] >= 1 and position["epoch"]
    _, again = post(client, {"channel": "api.a", "event": "e"})
    assert again["channels"]["api.a"]["offset"] == position["offset"] + 1


def test_targets_are_merged_and_deduplicated(client: APIClient) -> None:
    status, body = post(client, {"channel": "api.b", "channels": ["api.b", "api.c"], "users": ["7", 8], "event": "e"})
    assert status == 202 and list(body["channels"]) == ["api.b", "api.c", "user:7", "user:8"]


def test_too_many_targets(client: APIClient, settings: Any) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "MAX_CHANNELS_PER_PUBLISH": 2}
    status, body = post(client, {"channels": ["a", "b", "c"], "event": "e"})
    assert (status, body["code"]) == (400, "invalid")


def test_payload_limit_is_configurable(client: APIClient, settings: Any) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "MAX_PAYLOAD_BYTES": 10}
    status, body = post(client, {"channel": "a", "event": "e", "data": "x" * 20})
    assert (status, body["code"]) == (413, "payload_too_large")
    assert body["details"] == {"size": 22, "limit": 10}
    assert post(client, {"channel": "a", "event": "e", "data": "x"})[0] == 202


def test_validation_errors_name_the_field(client: APIClient) -> None:
    status, body = post(client, {"channel": "a b", "event": "e"})
    assert status == 400 and "channel" in body["details"]["fields"]
    assert body["message"].startswith("channel:")


def test_non_json_data_values(client: APIClient) -> None:
    response = client.post(
        "/api/notify", b'{"channel": "a", "event": "e", "data": NaN}', content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"


def test_wrong_auth_scheme() -> None:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Basic Zm9vOmJhcg==")
    status, body = post(api, {"channel": "a", "event": "e"})
    assert (status, body["code"]) == (401, "invalid_api_key")


def test_revoked_key_stops_at_once(client: APIClient) -> None:
    assert post(client, {"channel": "a", "event": "e"})[0] == 202
    ApiKey.objects.get().revoke()
    assert post(client, {"channel": "a", "event": "e"})[1]["code"] == "invalid_api_key"


def test_history_endpoint(client: APIClient) -> None:
    for n in range(3):
        post(client, {"channel": "api.h", "event": "e", "data": n})
    response = client.get("/api/channels/api.h/history?since=1")
    body = response.json()
    assert response.status_code == 200 and [e["data"] for e in body["events"]] == [1, 2]
    assert client.get("/api/channels/api.h/history?limit=0").json()["code"] == "invalid"
    assert client.get("/api/channels/nope:x/history").status_code == 404
    assert APIClient().get("/api/channels/api.h/history").status_code == 401


def test_unknown_paths_and_methods_answer_json(client: APIClient) -> None:
    response = client.get("/api/notify")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    response = client.get("/api/nothing-here")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_healthz() -> None:
    assert APIClient().get("/healthz").json() == {"status": "ok"}


def test_a_body_over_the_upload_limit_is_413(client: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.post("/api/notify", {"channel": "a", "event": "e", "data": "x" * 2000}, format="json")
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


def test_metrics_and_readiness_in_the_embedded_mode(client: APIClient) -> None:
    post(client, {"channel": "api.metrics", "event": "e"})
    text = APIClient().get("/metrics").content.decode()
    assert 'notifier_events_published_total{source="api"}' in text
    assert "notifier_publish_latency_seconds_bucket" in text
    ready = APIClient().get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["channel_layer"]["ok"] is True
