"""A server process's channel occupancy (realtime/online.py): no Redis work while no endpoint
wants `channel.*` webhooks, and the channels it already holds counted once one does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime import background, online, webhooks
from realtime.bridge import in_thread
from realtime.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db(transaction=True)


def told() -> list[tuple[str, Any]]:
    return [(d.type, d.payload["data"]) for d in WebhookDelivery.objects.order_by("pk")]


async def settled(occupancy: online.Occupancy) -> list[tuple[str, Any]]:
    """The webhooks written once the queued changes, and what they set off, are done."""
    await asyncio.wait_for(occupancy._ops.join(), 5)
    await asyncio.sleep(0.3)  # past the debounce; the webhooks are written in a thread
    await asyncio.gather(*online._pending)
    return await in_thread(told)


async def test_channels_held_before_an_endpoint_wanted_them_are_counted_at_the_refresh(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "PRESENCE_DEBOUNCE_SECS": 0.1}
    monkeypatch.setattr(background, "queue", lambda *args, **kwargs: None)  # no delivery attempts
    webhooks.forget_wanted()
    occupancy = online.Occupancy("process-1")
    runner = asyncio.create_task(occupancy.run())
    try:
        occupancy.joined("early")
        assert await settled(occupancy) == []  # nobody wants channel.*: not counted
        await in_thread(
            lambda: WebhookEndpoint.objects.create(
                url="https://hooks.example.com/x", events=["channel.occupied", "channel.vacated"], secret="whsec_x"
            )
        )
        webhooks.forget_wanted()
        occupancy.joined("late")
        occupancy.refresh(["early", "late"])
        assert sorted(map(str, await settled(occupancy))) == sorted(
            map(str, [("channel.occupied", {"channel": "late"}), ("channel.occupied", {"channel": "early"})])
        )
        occupancy.left("early")
        occupancy.left("late")
        occupancy.left("never-joined")
        assert sorted(map(str, (await settled(occupancy))[2:])) == sorted(
            map(str, [("channel.vacated", {"channel": "early"}), ("channel.vacated", {"channel": "late"})])
        )
    finally:
        runner.cancel()
