"""Who and what is online, told to the backend as webhooks (DESIGN §11), from the server
processes: `presence.online` / `presence.offline` for users, `channel.occupied` /
`channel.vacated` for channels.

A user comes online with their first connection anywhere in the cluster, and goes offline
once their last one has been gone for NOTIFIER_PRESENCE_DEBOUNCE_SECS: a page reload is
neither. A channel is occupied by its first subscriber anywhere in the cluster and vacated
the same way. realtime/rosters.py keeps the counts and the markers in Redis; users and channels
whose processes died are found by the Celery sweep (`Roster.gone`). The webhooks are written in
a thread, and only when some endpoint asked for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError
from redis.exceptions import RedisError

from . import metrics, rosters, webhooks
from .bridge import in_thread
from .conf import notifier_settings

logger = logging.getLogger(__name__)

CHANNEL_TYPES = frozenset({"channel.occupied", "channel.vacated"})

_pending: set[asyncio.Task[Any]] = set()  # checks and webhooks under way (kept from the GC)


def registered(user: str, code: int) -> None:
    """A connection of `user` was counted (`user_connections().add` answered `code`)."""
    if code == rosters.BECAME_HELD:
        tell("presence.online", {"user": user})


def unregistered(user: str, was_last: bool) -> None:
    """A connection of `user` closed; if it was their last, look again after the debounce."""
    if was_last:
        _check_later(rosters.user_connections(), user, "presence.offline", {"user": user})


def _check_later(roster: rosters.Roster, name: str, type: str, data: dict[str, str]) -> None:  # noqa: A002
    loop = asyncio.get_running_loop()
    loop.call_later(
        notifier_settings.PRESENCE_DEBOUNCE_SECS, lambda: _spawn(loop, _check(roster, name, type, data))
    )  # the coroutine is made when it runs: none is left unawaited if the loop stops first


def _spawn(loop: asyncio.AbstractEventLoop, work: Any) -> None:
    task = loop.create_task(work)
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _check(roster: rosters.Roster, name: str, type: str, data: dict[str, str]) -> None:  # noqa: A002
    try:
        if await roster.went_empty(name):
            tell(type, data)
    except (RedisError, OSError) as exc:  # the marker expires; the sweep tells it instead
        logger.warning("%s check failed: %s", type, exc)
        metrics.inc("notifier_redis_errors", operation="presence")


def tell(type: str, data: dict[str, str]) -> None:  # noqa: A002 - the webhook's name
    """Queue the webhook without holding the event loop (no database work here)."""
    if webhooks.wanted(type) is False:
        return
    _spawn(asyncio.get_running_loop(), _emit(type, data))


async def _emit(type: str, data: dict[str, str]) -> None:  # noqa: A002 - the webhook's name
    try:
        await in_thread(webhooks.emit, type, data)
    except DatabaseError as exc:
        logger.warning("%s webhook not queued: %s", type, exc)


class Occupancy:
    """One server process's share of the channel-processes roster: the hub says when it joins
    and leaves a channel's group, and this counts it, in order and off the subscribe path,
    while some endpoint wants `channel.*` webhooks (otherwise a channel costs no Redis work).
    When one starts wanting them, the next `refresh` counts the channels already joined."""

    def __init__(self, process: str) -> None:
        self.process = process
        self._ops: asyncio.Queue[tuple[str, Sequence[str]]] = asyncio.Queue()
        self._counted: set[str] = set()

    def joined(self, channel: str) -> None:
        self._ops.put_nowait(("join", (channel,)))

    def left(self, channel: str) -> None:
        self._ops.put_nowait(("leave", (channel,)))

    def refresh(self, joined: Sequence[str]) -> None:
        """Keep those of `joined` that are counted alive (the hub passes each joined channel
        once per round); count the others, joined before anyone wanted them."""
        self._ops.put_nowait(("refresh", joined))

    async def run(self) -> None:
        while True:
            op, channels = await self._ops.get()
            try:
                await self._apply(op, channels)
            except (RedisError, OSError, DatabaseError) as exc:  # entries lapse; the sweep tells
                logger.warning("channel occupancy %s failed: %s", op, exc)
                metrics.inc("notifier_redis_errors", operation="occupancy")
            finally:
                self._ops.task_done()

    async def _apply(self, op: str, channels: Sequence[str]) -> None:
        roster = rosters.channel_processes()
        if op == "leave":
            (channel,) = channels
            if channel in self._counted:
                self._counted.discard(channel)
                if await roster.remove(channel, self.process):
                    _check_later(roster, channel, "channel.vacated", {"channel": channel})
            return
        if op == "refresh":
            await roster.refresh([(channel, self.process) for channel in channels if channel in self._counted])
        if not await self._wanted():
            return
        for channel in channels:
            if channel not in self._counted:
                self._counted.add(channel)
                if await roster.add(channel, self.process) == rosters.BECAME_HELD:
                    tell("channel.occupied", {"channel": channel})

    async def _wanted(self) -> bool:
        known = [webhooks.wanted(type) for type in CHANNEL_TYPES]
        if None in known:
            return bool(CHANNEL_TYPES & await in_thread(webhooks.wanted_types))
        return any(known)
