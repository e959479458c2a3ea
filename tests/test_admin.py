"""The Django admin: API keys (create with the key shown once, scopes, revoke) and live channels."""

from __future__ import annotations

import json
import re

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from api.models import ApiKey
from notifier.asgi import application
from realtime.hub import get_hub
from realtime.publish import apublish

pytestmark = pytest.mark.django_db(transaction=True)


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
        "/admin/api/apikey/add/",
        {"name": "from-admin", "scopes": '["publish"]', "channels": '["orders.*"]'},
        follow=True,
    )
    assert response.status_code == 200
    shown = re.search(r"shown once: (nk_[A-Za-z0-9_\-]+)", response.content.decode())
    assert shown, response.content.decode()[:2000]
    record = ApiKey.objects.get(name="from-admin")
    assert record.scopes == ["publish"] and record.channels == ["orders.*"]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {shown.group(1)}")
    ok = api.post("/api/notify", {"channel": "orders.1", "event": "e"}, content_type="application/json")
    assert ok.status_code == 202
    outside = api.post("/api/notify", {"channel": "billing", "event": "e"}, content_type="application/json")
    assert outside.status_code == 403
    listing = staff.get("/admin/api/apikey/").content.decode()
    assert "from-admin" in listing and shown.group(1) not in listing  # never shown again

    staff.post("/admin/api/apikey/", {"action": "revoke", "_selected_action": [record.pk]})
    again = api.post("/api/notify", {"channel": "orders.1", "event": "e"}, content_type="application/json")
    assert again.status_code == 401


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
    await ws.disconnect()
    await get_hub().stop()
    # The admin request ran in asgiref's thread; close its database connection there.
    await sync_to_async(connections.close_all)()
