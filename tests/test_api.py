"""The HTTP API in the embedded mode (in-process history and layer), through DRF's test client."""

from __future__ import annotations

from typing import Any

import pytest
from channels.layers import channel_layers
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from api.models import ApiKey, hash_key
from realtime.notify import NotifyRequestSerializer, quick_notify_attrs

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


# Bodies near the rules of NotifyRequestSerializer: valid ones, and valid ones with one field
# replaced by something it refuses or would change (blank, padded, too long, another type, a
# trailing newline, a namespace that does not exist, an unknown field).
_odd = st.one_of(
    st.sampled_from(["", " x", "x ", "news\n", "a b", "é", "x" * 129, "nope:x", 5, -1, 1.5, True, None, [], ["x"]]),
    st.text(max_size=4),
)
_channel = st.sampled_from(["news", "chat:room-1", "user:42", "private:x", "a.b-c@d=e", "x" * 128])
_user = st.one_of(st.sampled_from(["42", "a@b.c", "x" * 64, "Z_9-.=@"]), st.integers(0, 99))
_name = st.one_of(st.sampled_from(["created", "x", "x" * 128, "order.paid", "a\tb"]), st.text(min_size=1, max_size=5))
_valid = st.fixed_dictionaries(
    {"event": _name},
    optional={
        "channel": _channel,
        "channels": st.lists(_channel, min_size=1, max_size=3),
        "user": _user,
        "users": st.lists(_user, min_size=1, max_size=3),
        "data": st.one_of(_odd, st.dictionaries(st.text(max_size=3), _odd, max_size=2)),
        "idempotency_key": _name,
    },
)
_fields = st.sampled_from(["channel", "channels", "user", "users", "event", "idempotency_key", "extra"])
_bodies = st.one_of(
    _valid,
    st.tuples(_valid, _fields, st.one_of(_odd, st.lists(_odd, max_size=2))).map(lambda b: {**b[0], b[1]: b[2]}),
    _odd,
)


@hypothesis_settings(max_examples=500)
@given(_bodies)
def test_quick_validation_accepts_only_what_the_serializer_accepts_with_the_same_data(body: Any) -> None:
    quick = quick_notify_attrs(body)
    if quick is None:
        return  # the serializer decides, as it always did
    serializer = NotifyRequestSerializer(data=body)
    assert serializer.is_valid(), (body, serializer.errors)
    assert dict(serializer.validated_data) == quick


def test_quick_validation_takes_ordinary_bodies() -> None:
    """The fast route is only fast if ordinary events do not fall back to DRF."""
    for body in [
        {"channel": "news", "event": "created", "data": {"id": 1}},
        {"channels": ["a", "b"], "user": 42, "users": ["7", "8"], "event": "x", "idempotency_key": "k-1"},
    ]:
        assert quick_notify_attrs(body) is not None, body


def test_a_batch_stored_but_not_sent_answers_each_events_position(
    client: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "no event was published": each was stored and will be delivered, so the client gets
    every slot with its position (and must not publish them again)."""
    from api import publishing
    from realtime.history import Position
    from realtime.publish import PublishError, PublishRequest, PublishResult, StoredNotSent, Unavailable

    async def stored_not_sent(requests: list[PublishRequest]) -> list[PublishError]:
        return [StoredNotSent(PublishResult(f"id-{r.event}", {"a": Position(1, "e1")})) for r in requests]

    monkeypatch.setattr(publishing, "apublish_many", stored_not_sent)
    events = [{"channel": "a", "event": "one"}, {"channel": "a", "event": "two"}]
    response = client.post("/api/notify/batch", {"events": events}, format="json")
    assert response.status_code == 202, response.json()
    errors = [r["error"] for r in response.json()["results"]]
    assert [(e["code"], e["details"]["stored"], e["details"]["id"]) for e in errors] == [
        ("unavailable", True, "id-one"),
        ("unavailable", True, "id-two"),
    ]

    async def unavailable(requests: list[PublishRequest]) -> list[PublishError]:
        return [Unavailable("down") for _ in requests]

    monkeypatch.setattr(publishing, "apublish_many", unavailable)
    response = client.post("/api/notify/batch", {"events": events}, format="json")
    assert (response.status_code, response.json()["code"]) == (503, "unavailable")
