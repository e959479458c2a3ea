"""publish_on_commit: an event never announces a row that was rolled back. Real transactions on
the PostgreSQL test database (pytest-django's `transactional_db`: commits really commit)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import channel_layers, get_channel_layer
from django.db import connections, transaction

from api.models import ApiKey
from realtime.channels import group_of
from realtime.history import get_history
from realtime.publish import apublish_on_commit, publish_on_commit

pytestmark = pytest.mark.django_db(transaction=True)


class RolledBack(Exception):
    pass


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    """The ORM ran in sync_to_async's thread: close its connection, or the test database
    cannot be dropped at the end of the run."""
    yield
    await sync_to_async(connections.close_all)()


async def listener(channel: str) -> str:
    """A layer channel in the channel's group, as a hub's."""
    channel_layers.backends.pop("default", None)  # an in-memory layer of this test's loop
    name = await get_channel_layer().new_channel(prefix="test.")
    await get_channel_layer().group_add(group_of(channel), name)
    return name


async def received(name: str, wait: float = 0.3) -> list[dict[str, object]]:
    messages = []
    while True:
        try:
            messages.append(await asyncio.wait_for(get_channel_layer().receive(name), wait))
        except TimeoutError:
            return messages


async def stored(channel: str) -> list[int]:
    return [offset for offset, _ in (await get_history().read(channel, after=0, limit=10)).frames]


def new_key(name: str) -> ApiKey:
    return ApiKey.objects.create(name=name, prefix=name[:8], key_hash=uuid.uuid4().hex)


def make_key(name: str, channel: str, fail: bool) -> None:
    with transaction.atomic():
        key = new_key(name)
        publish_on_commit([channel], "key.created", {"id": key.pk})
        if fail:
            raise RolledBack


async def test_a_rolled_back_transaction_sends_nothing_and_a_committed_one_sends_once() -> None:
    channel = f"commit.{uuid.uuid4().hex[:8]}"
    name = await listener(channel)
    with pytest.raises(RolledBack):
        await sync_to_async(make_key)(f"gone-{channel}", channel, True)
    assert not await ApiKey.objects.filter(name=f"gone-{channel}").aexists()
    assert await received(name) == [] and await stored(channel) == []

    await sync_to_async(make_key)(f"kept-{channel}", channel, False)
    key = await ApiKey.objects.aget(name=f"kept-{channel}")
    (message,) = await received(name)
    assert message["type"] == "hub.event" and f'"id":{key.pk}' in message["frames"][0]  # type: ignore[index]
    assert await stored(channel) == [1]


async def test_outside_a_transaction_it_publishes_at_once() -> None:
    channel = f"commit.{uuid.uuid4().hex[:8]}"
    name = await listener(channel)
    await sync_to_async(publish_on_commit)([channel], "now")
    await apublish_on_commit([channel], "now-async")
    assert [m["frames"][0].count('"event":"now') for m in await received(name)] == [1, 1]  # type: ignore[index]


async def test_the_async_form_waits_for_the_transaction_its_sync_code_opened() -> None:
    channel = f"commit.{uuid.uuid4().hex[:8]}"
    name = await listener(channel)

    def in_transaction(fail: bool) -> None:
        with transaction.atomic():
            new_key(f"a-{fail}-{channel}")
            # an async helper called from the transaction's sync code
            async_to_sync(apublish_on_commit)([channel], "async", fail)
            if fail:
                raise RolledBack

    with pytest.raises(RolledBack):
        await sync_to_async(in_transaction)(True)
    assert await received(name) == []
    await sync_to_async(in_transaction)(False)
    (message,) = await received(name)
    assert '"data":false' in message["frames"][0]  # type: ignore[index]
