"""The inbox (DESIGN §10) through DRF's test client on the test PostgreSQL database, with the
embedded mode's in-process history and layer: store on publish, the end-user API, isolation,
paging, bad input, and the `inbox.changed` event after every change."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.layers import channel_layers
from rest_framework.test import APIClient

from api.models import ApiKey
from realtime.bridge import run_sync
from realtime.history import get_history
from realtime.models import Notification
from realtime.tokens import mint_connection_token

# Rows are written from the publishing loop's thread, outside the test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_layer() -> None:
    channel_layers.backends.pop("default", None)


@pytest.fixture
def backend() -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiKey.create_key('inbox-tests')[1]}")
    return api


def as_user(user: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {mint_connection_token(user)[0]}")
    return api


def notify(backend: APIClient, body: dict[str, Any]) -> dict[str, Any]:
    response = backend.post("/api/notify", body, format="json")
    assert response.status_code == 202, response.json()
    return dict(response.json())


def changes(user: str) -> list[dict[str, Any]]:
    """The `inbox.changed` events in the history of `user:<user>`, oldest first."""
    page = run_sync(get_history().read, f"user:{user}", 0, 1000)
    events = [json.loads(frame) for _, frame in page.frames]
    return [e["data"] for e in events if e["event"] == "inbox.changed"]


def test_a_publish_with_inbox_stores_one_notification_per_user_and_announces_it(backend: APIClient) -> None:
    answer = notify(backend, {"users": ["a1", "a2"], "event": "order.shipped", "data": {"n": 1}, "inbox": True})
    assert answer["inbox"] == {"a1": answer["id"], "a2": answer["id"]}
    listed = as_user("a1").get("/api/inbox").json()
    (only,) = listed["notifications"]
    assert only["id"] == answer["id"] and only["event"] == "order.shipped" and only["data"] == {"n": 1}
    assert only["channel"] == "user:a1" and only["read_at"] is None and only["created_at"].endswith("Z")
    assert listed["counts"] == {"unread": 1, "unseen": 1, "total": 1} and listed["next"] is None
    assert changes("a2") == [{"action": "added", "ids": [answer["id"]], "all": False, "counts": listed["counts"]}]


def test_without_inbox_nothing_is_stored(backend: APIClient) -> None:
    answer = notify(backend, {"user": "b1", "event": "e"})
    assert "inbox" not in answer and not Notification.objects.filter(user="b1").exists()


def test_inbox_needs_a_user_target_and_valid_fields(backend: APIClient) -> None:
    for body in (
        {"channel": "news", "event": "e", "inbox": True},
        {"user": "c1", "event": "e", "inbox": "yes"},
        {"user": "c1", "event": "e", "inbox": True, "category": "Bad Category"},
        {"user": "c1", "event": "inbox.changed"},
    ):
        response = backend.post("/api/notify", body, format="json")
        assert (response.status_code, response.json()["code"]) == (400, "invalid"), body
    assert not Notification.objects.exists()


def test_a_retry_with_the_idempotency_key_stores_nothing_twice(backend: APIClient) -> None:
    body = {"user": "d1", "event": "e", "inbox": True, "idempotency_key": "once"}
    first, again = notify(backend, body), notify(backend, body)
    assert first == again
    assert Notification.objects.filter(user="d1").count() == 1


def test_a_batch_stores_each_event_and_announces_once_per_user(backend: APIClient) -> None:
    events = [{"user": "e1", "event": f"n{i}", "inbox": True, "category": "orders"} for i in range(3)]
    response = backend.post("/api/notify/batch", {"events": [*events, {"user": "e2", "event": "x"}]}, format="json")
    assert response.status_code == 202
    ids = [r["id"] for r in response.json()["results"][:3]]
    assert [n["id"] for n in as_user("e1").get("/api/inbox").json()["notifications"]] == ids[::-1]
    assert changes("e1") == [
        {"action": "added", "ids": ids, "all": False, "counts": {"unread": 3, "unseen": 3, "total": 3}}
    ]


def test_marks_counts_and_delete_each_announce_the_change(backend: APIClient) -> None:
    ids = [notify(backend, {"user": "f1", "event": f"n{i}", "inbox": True})["id"] for i in range(3)]
    user = as_user("f1")
    answer = user.post("/api/inbox/mark", {"ids": ids[:2], "as": "read"}, format="json").json()
    assert answer == {"updated": 2, "counts": {"unread": 1, "unseen": 1, "total": 3}}
    assert user.get("/api/inbox/counts").json() == answer["counts"]
    assert [n["id"] for n in user.get("/api/inbox?status=unread").json()["notifications"]] == [ids[2]]
    assert user.post("/api/inbox/mark", {"all": True, "as": "archived"}, format="json").json()["updated"] == 3
    assert user.get("/api/inbox").json()["notifications"] == []
    assert len(user.get("/api/inbox?status=archived").json()["notifications"]) == 3
    assert user.post("/api/inbox/mark", {"ids": [ids[0]], "as": "unarchived"}, format="json").json()["updated"] == 1
    assert user.delete(f"/api/inbox/{ids[0]}").status_code == 204
    assert user.delete(f"/api/inbox/{ids[0]}").status_code == 404
    assert [c["action"] for c in changes("f1")][-4:] == ["marked", "marked", "marked", "deleted"]
    marked_all = changes("f1")[-3]
    assert marked_all["all"] is True and marked_all["ids"] is None and marked_all["as"] == "archived"


def test_a_user_sees_and_changes_only_their_own(backend: APIClient) -> None:
    theirs = notify(backend, {"user": "g42", "event": "secret", "inbox": True})["id"]
    other = as_user("g43")
    assert other.get("/api/inbox").json()["notifications"] == []
    assert other.get("/api/inbox/counts").json() == {"unread": 0, "unseen": 0, "total": 0}
    assert other.post("/api/inbox/mark", {"ids": [theirs], "as": "read"}, format="json").json()["updated"] == 0
    assert other.delete(f"/api/inbox/{theirs}").status_code == 404
    assert as_user("g42").get("/api/inbox/counts").json()["unread"] == 1


def test_paging_over_250_has_no_duplicate_or_gap_while_new_ones_arrive(backend: APIClient) -> None:
    published = []
    for size in (100, 100, 50):
        events = [{"user": "h1", "event": f"n{len(published) + i}", "inbox": True} for i in range(size)]
        results = backend.post("/api/notify/batch", {"events": events}, format="json").json()["results"]
        published += [r["id"] for r in results]
    user, seen, cursor = as_user("h1"), [], None
    while True:
        page = user.get("/api/inbox", {"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
        seen += [n["id"] for n in page["notifications"]]
        notify(backend, {"user": "h1", "event": "arrived-while-paging", "inbox": True})
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == published[::-1]


def test_bad_input_is_a_400_with_a_stable_code(backend: APIClient) -> None:
    user = as_user("i1")
    for path, params in [
        ("/api/inbox", {"status": "new"}),
        ("/api/inbox", {"limit": 1000}),
        ("/api/inbox", {"limit": 0}),
        ("/api/inbox", {"cursor": "garbage!"}),
    ]:
        response = user.get(path, params)
        assert (response.status_code, response.json()["code"]) == (400, "invalid"), params
    for body in [
        {"ids": ["x"], "as": "eaten"},
        {"ids": [f"id{i}" for i in range(10_000)], "as": "read"},
        {"all": True, "as": "unread"},
        {"as": "read"},
        {"ids": ["x"], "all": True, "as": "read"},
        {"ids": "x", "as": "read"},
        [1, 2],
    ]:
        response = user.post("/api/inbox/mark", body, format="json")
        assert (response.status_code, response.json()["code"]) == (400, "invalid"), body


def test_the_inbox_needs_a_connection_token_or_a_session() -> None:
    assert APIClient().get("/api/inbox").status_code == 401
    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    response = forged.get("/api/inbox")
    assert (response.status_code, response.json()["code"]) == (401, "invalid_token")


def key_client(*args: str, channels: list[str] | None = None, scopes: list[str] | None = None) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiKey.create_key('backend', scopes, channels)[1]}")
    return api


def test_a_backend_acts_for_a_user_with_the_users_scope_on_their_channel(backend: APIClient) -> None:
    ids = [notify(backend, {"user": "j42", "event": f"n{i}", "inbox": True})["id"] for i in range(2)]
    acting = key_client(scopes=["users"], channels=["user:j*"])
    assert [n["id"] for n in acting.get("/api/users/j42/inbox").json()["notifications"]] == ids[::-1]
    assert acting.get("/api/users/j42/inbox/counts").json()["unread"] == 2
    marked = acting.post("/api/users/j42/inbox/mark", {"ids": ids[:1], "as": "read"}, format="json").json()
    assert marked["updated"] == 1 and marked["counts"]["unread"] == 1
    assert acting.delete(f"/api/users/j42/inbox/{ids[1]}").status_code == 204
    assert as_user("j42").get("/api/inbox/counts").json() == {"unread": 0, "unseen": 0, "total": 1}

    not_theirs = key_client(scopes=["users"], channels=["user:k*"])
    response = not_theirs.get("/api/users/j42/inbox")
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    no_scope = key_client(scopes=["publish", "read", "tokens"])
    assert no_scope.get("/api/users/j42/inbox").status_code == 403
    assert as_user("j42").get("/api/users/j42/inbox").status_code == 401  # a user token is not a key
    assert acting.get("/api/users/not%20a%20user/inbox").status_code == 400


def test_erasing_a_user_removes_their_inbox_preferences_and_channel_history(backend: APIClient) -> None:
    for i in range(3):
        notify(backend, {"user": "l1", "event": f"n{i}", "inbox": True})
    notify(backend, {"user": "l2", "event": "kept", "inbox": True})
    acting = key_client(scopes=["users"], channels=["user:*"])
    muted = acting.put("/api/users/l1/inbox/preferences", {"categories": {"x": {"inbox": False}}}, format="json")
    assert muted.status_code == 200
    assert acting.delete("/api/users/l1/inbox").json() == {"deleted": 3}
    assert not Notification.objects.filter(user="l1").exists() and Notification.objects.filter(user="l2").exists()
    assert as_user("l1").get("/api/inbox/preferences").json() == {"categories": {}}
    # The channel's history is gone: only the last inbox.changed of the erasure is in it.
    assert changes("l1") == [
        {"action": "deleted", "ids": None, "all": True, "counts": {"unread": 0, "unseen": 0, "total": 0}}
    ]
    assert len(run_sync(get_history().read, "user:l1", 0, 100).frames) == 1


def test_a_muted_category_is_not_stored_but_still_sent(backend: APIClient) -> None:
    user = as_user("m1")
    put = user.put(
        "/api/inbox/preferences", {"categories": {"promo": {"inbox": False}, "orders": {"push": False}}}, format="json"
    )
    expected = {"orders": {"inbox": True, "push": False}, "promo": {"inbox": False, "push": True}}
    assert put.json() == {"categories": expected}
    muted = notify(backend, {"user": "m1", "event": "sale", "inbox": True, "category": "promo"})
    kept = notify(backend, {"user": "m1", "event": "shipped", "inbox": True, "category": "orders"})
    assert muted["inbox"] == {} and kept["inbox"] == {"m1": kept["id"]}
    assert [n["id"] for n in user.get("/api/inbox").json()["notifications"]] == [kept["id"]]
    frames = run_sync(get_history().read, "user:m1", 0, 100).frames
    assert [json.loads(f)["event"] for _, f in frames] == ["sale", "shipped", "inbox.changed"]
    for body in ({"categories": {"Bad": {}}}, {"categories": {"a": {"inbox": "no"}}}, {"categories": []}):
        response = user.put("/api/inbox/preferences", body, format="json")
        assert (response.status_code, response.json()["code"]) == (400, "invalid"), body


def test_retention_keeps_at_most_the_limit_dropping_read_ones_first(backend: APIClient, settings: Any) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "INBOX_MAX_PER_USER": 5}
    ids = [notify(backend, {"user": "n1", "event": f"n{i}", "inbox": True})["id"] for i in range(5)]
    user = as_user("n1")
    user.post("/api/inbox/mark", {"ids": [ids[3]], "as": "read"}, format="json")
    newer = [notify(backend, {"user": "n1", "event": f"m{i}", "inbox": True})["id"] for i in range(2)]
    left = [n["id"] for n in user.get("/api/inbox?status=all").json()["notifications"]]
    assert left == [*newer[::-1], ids[4], ids[2], ids[1]]  # the read one first, then the oldest unread


def test_notifications_past_their_age_are_expired(backend: APIClient) -> None:
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    old = notify(backend, {"user": "o1", "event": "old", "inbox": True})["id"]
    Notification.objects.filter(event_id=old).update(created_at=timezone.now() - timedelta(days=91))
    call_command("expire_inbox")
    assert not Notification.objects.filter(event_id=old).exists()
    notify(backend, {"user": "o1", "event": "new", "inbox": True})
    assert Notification.objects.filter(user="o1").count() == 1


def test_a_store_expires_its_users_old_notifications_only(backend: APIClient) -> None:
    from datetime import timedelta

    from django.utils import timezone

    old = {user: notify(backend, {"user": user, "event": "old", "inbox": True})["id"] for user in ("p1", "p2")}
    Notification.objects.filter(event_id__in=old.values()).update(created_at=timezone.now() - timedelta(days=91))
    notify(backend, {"user": "p1", "event": "new", "inbox": True})
    assert list(Notification.objects.filter(user="p1").values_list("event", flat=True)) == ["new"]
    assert Notification.objects.filter(event_id=old["p2"]).exists()  # not p1's: left to expire_inbox
    assert as_user("p1").get("/api/inbox/counts").json() == {"unread": 1, "unseen": 1, "total": 1}
