"""The Django admin: API keys (create with the key shown once, scopes, revoke) and live channels."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from api.models import ApiKey
from notifier.asgi import application
from realtime.process import get_hub
from realtime.publish import apublish

from .support import RedisServer, Server, manage, post_json, service_env, wait_until
from .wsclient import Client as WsClient

pytestmark = pytest.mark.django_db(transaction=True)

KEY = re.compile(r"shown once: <code[^>]*>(nk_[A-Za-z0-9_\-]+)</code>")


@pytest.fixture(autouse=True)
def fresh_layer() -> None:
    channel_layers.backends.pop("default", None)


@pytest.fixture
def staff() -> Client:
    User.objects.create_superuser("admin", "admin@example.com", "a-long-admin-password")
    client = Client()
    assert client.login(username="admin", password="a-long-admin-password")
    return client


def test_create_a_key_in_the_admin_shows_it_once(staff: Client) -> None:
    response = staff.post(
        "/admin/api/apikey/add/", {"name": "from-admin", "scopes": '["publish"]', "channels": '["orders.*"]'}
    )
    assert response.status_code == 200  # the key is in this response, not behind a redirect
    shown = KEY.search(response.content.decode())
    assert shown, response.content.decode()[:2000]
    key = shown.group(1)
    assert "no-store" in response["Cache-Control"]
    # Server-side only: no cookie (message storage, session) carries it.
    assert all(key not in morsel.value for morsel in response.cookies.values())
    assert all(key not in morsel.value for morsel in staff.cookies.values())
    assert key not in json.dumps(dict(staff.session.items()))
    record = ApiKey.objects.get(name="from-admin")
    assert record.scopes == ["publish"] and record.channels == ["orders.*"]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    ok = api.post("/api/notify", {"channel": "orders.1", "event": "e"}, content_type="application/json")
    assert ok.status_code == 202
    outside = api.post("/api/notify", {"channel": "billing", "event": "e"}, content_type="application/json")
    assert outside.status_code == 403
    for page in ("/admin/api/apikey/", f"/admin/api/apikey/{record.pk}/change/"):
        listing = staff.get(page).content.decode()
        assert "from-admin" in listing and key not in listing  # never shown again

    staff.post("/admin/api/apikey/", {"action": "revoke", "_selected_action": [record.pk]})
    again = api.post("/api/notify", {"channel": "orders.1", "event": "e"}, content_type="application/json")
    assert again.status_code == 401


@pytest.mark.parametrize(
    ("scopes", "channels", "error"),
    [
        ('["publish", "admin"]', '["*"]', "Unknown scopes [&#x27;admin&#x27;]"),
        ('"publish"', '["*"]', "A JSON list of scopes"),
        ('["publish"]', '"orders.*"', "A JSON list of channel patterns"),
    ],
)
def test_bad_scopes_or_channels_are_form_errors(staff: Client, scopes: str, channels: str, error: str) -> None:
    response = staff.post("/admin/api/apikey/add/", {"name": "bad", "scopes": scopes, "channels": channels})
    assert response.status_code == 200
    page = response.content.decode()
    assert "errorlist" in page and error in page, page[:3000]
    assert not ApiKey.objects.filter(name="bad").exists()

    record, _ = ApiKey.create_key("existing", ["read"])
    change = staff.post(
        f"/admin/api/apikey/{record.pk}/change/", {"name": "existing", "scopes": scopes, "channels": channels}
    )
    assert change.status_code == 200 and error in change.content.decode()
    record.refresh_from_db()
    assert record.scopes == ["read"]


def test_the_live_data_is_for_staff_only(staff: Client) -> None:
    User.objects.create_user("visitor", "visitor@example.com", "a-long-visitor-password")
    visitor = Client()
    assert visitor.login(username="visitor", password="a-long-visitor-password")
    for client in (Client(), visitor):
        response = client.get("/admin/api/apikey/channels/data/")
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert staff.get("/admin/api/apikey/channels/data/").status_code == 200


async def test_live_channels_view(staff: Client) -> None:
    ws = WebsocketCommunicator(application, "/ws/")
    await ws.connect()
    await ws.receive_from(timeout=5)
    await ws.send_json_to({"op": "subscribe", "channel": "admin.live"})
    await ws.receive_from(timeout=5)
    await apublish(["admin.live"], "shown-in-admin", {"n": 1})
    json.loads(await ws.receive_from(timeout=5))

    page = (await sync_to_async(staff.get)("/admin/api/apikey/channels/?channel=admin.live")).content.decode()
    assert '<td><a href="?channel=admin.live">admin.live</a></td><td>1</td>' in page
    assert "shown-in-admin" in page
    assert 'http-equiv="refresh"' not in page  # it updates itself: no reload wiping the input
    assert 'fetch(url + "?channel="' in page and "/admin/api/apikey/channels/data/" in page
    data = (await sync_to_async(staff.get)("/admin/api/apikey/channels/data/?channel=admin.live")).json()
    assert data["channels"] == [["admin.live", 1]] and data["error"] is None
    assert [(e["event"], e["data"]) for e in data["events"]] == [("shown-in-admin", '{"n": 1}')]
    bad = (await sync_to_async(staff.get)("/admin/api/apikey/channels/data/?channel=a%20b")).json()
    assert bad["error"] == "'a b' is not a channel name"
    await ws.disconnect()
    await get_hub().stop()
    # The admin request ran in asgiref's thread; close its database connection there.
    await sync_to_async(connections.close_all)()


# -- against a real server and Redis ------------------------------------------------------------


def admin_session(server: Server, env: dict[str, str]) -> httpx.Client:
    """A logged-in staff session on `server` (a superuser made in its database)."""
    username, password = f"staff{uuid.uuid4().hex[:8]}", "a-long-staff-password"
    manage({**env, "DJANGO_SUPERUSER_PASSWORD": password}, "createsuperuser", "--noinput",
           "--username", username, "--email", f"{username}@example.com")  # fmt: skip
    client = httpx.Client(base_url=server.http, timeout=10)
    login = client.get("/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    assert csrf, login.text[:2000]
    done = client.post(
        "/admin/login/?next=/admin/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf.group(1)},
    )
    assert done.status_code == 302 and done.headers["location"] == "/admin/", done.text[:2000]
    return client


@pytest.mark.integration
async def test_live_data_shows_the_last_events_across_processes(
    redis_server: RedisServer, service_db: str, workdir: Path, api_key: str
) -> None:
    env = service_env(redis_server.url, service_db, NOTIFIER_REDIS_PREFIX=f"a{uuid.uuid4().hex[:6]}")
    first, second = Server(env, workdir, kind="uvicorn"), Server(env, workdir, kind="uvicorn")
    channel = f"admin.{uuid.uuid4().hex[:8]}"
    try:
        clients = [await WsClient.connect(server.ws) for server in (first, first, second)]
        for client in clients:
            await client.subscribe(channel)
        events = [{"channel": channel, "event": "e", "data": n} for n in range(25)]
        assert post_json(f"{first.http}/api/notify/batch", {"events": events}, api_key)[0] == 202
        session = admin_session(second, env)

        def data() -> dict:
            answer = session.get("/admin/api/apikey/channels/data/", params={"channel": channel})
            assert answer.status_code == 200, answer.text[:2000]
            return dict(answer.json())

        wait_until(lambda: [channel, 3] in data()["channels"], timeout=10, what="3 subscribers, from two processes")
        live = data()
        assert live["error"] is None
        assert [e["offset"] for e in live["events"]] == list(range(25, 5, -1))  # the last 20, newest first
        assert [e["data"] for e in live["events"]][:2] == ["24", "23"]
        for client in clients:
            # Read what was published first: a websockets client whose queue is full stops reading
            # the socket, so its close handshake would wait out its 10 s close timeout.
            assert [e["data"] for e in await client.events(25)] == list(range(25))
            await client.close()
        session.close()
    finally:
        first.stop()
        second.stop()


@pytest.mark.integration
async def test_live_view_shows_redis_errors_instead_of_failing(service_db: str, workdir: Path, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    env = service_env(redis_server.url, service_db)
    server = Server(env, workdir, kind="uvicorn")
    try:
        session = admin_session(server, env)
        assert session.get("/admin/api/apikey/channels/data/").json()["error"] is None
        redis_server.stop()
        page = session.get("/admin/api/apikey/channels/", params={"channel": "news"})
        assert page.status_code == 200 and "Redis is unavailable" in page.text, page.text[:2000]
        answer = session.get("/admin/api/apikey/channels/data/", params={"channel": "news"})
        assert answer.status_code == 200 and answer.json()["error"].startswith("Redis is unavailable")
        session.close()
    finally:
        server.stop()
        redis_server.stop()


def test_push_subscriptions_and_their_recent_attempts_are_shown_read_only(staff: Client) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from realtime.models import PushDelivery, PushSubscription

    subscription = PushSubscription.objects.create(
        user="u42", endpoint="https://push.example.com/send/abc", p256dh="p", auth="a"
    )
    PushDelivery.objects.create(
        event_id="e" * 32,
        subscription=subscription,
        user="u42",
        payload={},
        ttl=60,
        status=PushDelivery.FAILED,
        attempts=3,
        last_status=429,
        last_error="slow down",
        give_up_at=timezone.now() + timedelta(minutes=1),
    )
    listed = staff.get("/admin/realtime/pushsubscription/?q=u42")
    assert listed.status_code == 200 and "https://push.example.com" in listed.content.decode()
    page = staff.get(f"/admin/realtime/pushsubscription/{subscription.pk}/change/").content.decode()
    assert "slow down" in page and "429" in page
    attempts = staff.get("/admin/realtime/pushdelivery/?status=failed")
    assert attempts.status_code == 200 and "e" * 32 in attempts.content.decode()
    assert staff.get("/admin/realtime/pushdelivery/add/").status_code == 403


def test_scheduled_events_are_listed_and_cancelled_in_the_admin(staff: Client) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from realtime.models import ScheduledEvent

    later = timezone.now() + timedelta(hours=1)
    rows = [
        ScheduledEvent.objects.create(
            event_id=f"{name}{'0' * 20}",
            publisher="key:1",
            channels=["news"],
            event=name,
            deliver_at=later,
            next_attempt_at=later,
            status=status,
        )
        for name, status in (("waiting", ScheduledEvent.PENDING), ("sent", ScheduledEvent.DELIVERED))
    ]
    listed = staff.get("/admin/realtime/scheduledevent/?status=pending").content.decode()
    assert "waiting" in listed and "sent" + "0" * 20 not in listed
    selected = [str(row.pk) for row in rows]
    page = staff.post(
        "/admin/realtime/scheduledevent/", {"action": "cancel", "_selected_action": selected}, follow=True
    )
    assert page.status_code == 200 and "1 cancelled" in page.content.decode()
    statuses = dict(ScheduledEvent.objects.values_list("event", "status"))
    assert statuses == {"waiting": ScheduledEvent.CANCELLED, "sent": ScheduledEvent.DELIVERED}
    assert staff.get("/admin/realtime/scheduledevent/add/").status_code == 403
