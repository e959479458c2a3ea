"""A webhook endpoint's life in process (realtime/webhooks.py): disabled once it has failed for
24 hours, enabled again by rotating its secret, and a delivery sent again from the admin."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from realtime import background, outbound, webhooks
from realtime.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db(transaction=True)


class Failing(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def do_POST(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def failing_url(settings: Any) -> Iterator[str]:
    settings.NOTIFIER = {**settings.NOTIFIER, "OUTBOUND_ALLOW_PRIVATE": True}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """What would have gone to Celery (nothing runs: each test drives the deliveries itself)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(background, "queue", lambda task, kwargs, countdown=0: calls.append((task, kwargs)))
    return calls


def test_an_endpoint_failing_for_24_hours_is_disabled_and_rotating_enables_it(
    failing_url: str, queued: list[Any]
) -> None:
    endpoint, _ = webhooks.create(failing_url, ["inbox.read"])
    (first,) = webhooks.emit("inbox.read", {"user": "u1", "all": True})
    assert webhooks.deliver(first, outbound.session()).name == "retry"
    endpoint.refresh_from_db()
    assert endpoint.failing_since is not None and endpoint.disabled_at is None
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - timedelta(hours=24, seconds=1))
    WebhookDelivery.objects.filter(pk=first).update(next_attempt_at=timezone.now())
    assert webhooks.deliver(first, outbound.session()).name == "disabled"
    endpoint.refresh_from_db()
    assert endpoint.disabled_at is not None
    assert webhooks.describe(endpoint)["disabled"] is True
    assert WebhookDelivery.objects.get(pk=first).status == WebhookDelivery.FAILED
    assert webhooks.emit("inbox.read", {"user": "u1", "all": True}) == []  # a disabled endpoint gets nothing
    assert webhooks.rotate(endpoint.pk) is not None
    endpoint.refresh_from_db()
    assert (endpoint.disabled_at, endpoint.failing_since) == (None, None)
    assert len(webhooks.emit("inbox.read", {"user": "u1", "all": True})) == 1


def test_a_delivery_given_up_on_is_sent_again_from_the_admin(failing_url: str, queued: list[Any]) -> None:
    webhooks.create(failing_url, ["push.failed"])
    (delivery_id,) = webhooks.emit("push.failed", {"user": "u1", "subscription": 1, "status": 400})
    WebhookDelivery.objects.filter(pk=delivery_id).update(
        status=WebhookDelivery.FAILED, give_up_at=timezone.now() - timedelta(seconds=1)
    )
    User.objects.create_superuser("admin", "admin@example.com", "a-long-admin-password")
    staff = Client()
    assert staff.login(username="admin", password="a-long-admin-password")
    queued.clear()
    page = staff.post(
        "/admin/realtime/webhookdelivery/", {"action": "redeliver", "_selected_action": [str(delivery_id)]}, follow=True
    )
    assert page.status_code == 200 and "1 queued again" in page.content.decode()
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert delivery.status == WebhookDelivery.PENDING and delivery.give_up_at > timezone.now()
    assert queued == [(webhooks.WEBHOOK_TASK, {"delivery_id": delivery_id})]
    listed = staff.get("/admin/realtime/webhookendpoint/").content.decode()
    assert failing_url in listed and "push.failed" in listed
