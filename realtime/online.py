"""`presence.online` and `presence.offline` webhooks (DESIGN §11), from the server processes.

A user comes online with their first connection anywhere in the cluster, and goes offline
once their last one has been gone for NOTIFIER_PRESENCE_DEBOUNCE_SECS: a page reload is
neither (realtime/presence.py keeps the count and the markers in Redis). Users whose process
died are found by the Celery sweep (`gone_users`). The webhooks are written in a thread, and
only when some endpoint asked for them.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.db import DatabaseError, close_old_connections
from redis.exceptions import RedisError

from . import metrics, webhooks
from .conf import notifier_settings
from .presence import CAME_ONLINE, get_presence

logger = logging.getLogger(__name__)

_checks: set[asyncio.Task[None]] = set()  # offline checks waiting for their debounce


def registered(user: str, code: int) -> None:
    """A connection of `user` was counted (`register_connection` answered `code`)."""
    if code == CAME_ONLINE:
        tell("presence.online", user)


def unregistered(user: str, was_last: bool) -> None:
    """A connection of `user` closed; if it was their last, look again after the debounce."""
    if not was_last:
        return
    loop = asyncio.get_running_loop()
    loop.call_later(notifier_settings.PRESENCE_DEBOUNCE_SECS, _start_check, loop, user)


def _start_check(loop: asyncio.AbstractEventLoop, user: str) -> None:
    task = loop.create_task(_check(user))
    _checks.add(task)
    task.add_done_callback(_checks.discard)


async def _check(user: str) -> None:
    try:
        if await get_presence().went_offline(user):
            tell("presence.offline", user)
    except (RedisError, OSError) as exc:  # the marker expires; the sweep tells it instead
        logger.warning("offline check of a user failed: %s", exc)
        metrics.inc("notifier_redis_errors", operation="presence")


def tell(type: str, user: str) -> None:  # noqa: A002 - the webhook's name
    """Queue the webhook without holding the event loop (no database work here)."""
    if webhooks.wanted(type) is False:
        return
    task = asyncio.get_running_loop().create_task(_emit(type, {"user": user}))
    _checks.add(task)
    task.add_done_callback(_checks.discard)


async def _emit(type: str, data: dict[str, str]) -> None:  # noqa: A002 - the webhook's name
    try:
        await sync_to_async(_emit_in_thread, thread_sensitive=False)(type, data)
    except DatabaseError as exc:
        logger.warning("%s webhook not queued: %s", type, exc)


def _emit_in_thread(type: str, data: dict[str, str]) -> None:  # noqa: A002 - the webhook's name
    close_old_connections()
    try:
        webhooks.emit(type, data)
    finally:
        close_old_connections()
