"""Presence membership of one connection, whatever its transport (WebSocket or SSE): joining a
channel's presence when subscribed on a namespace that has it, leaving it (with the debounced
`leave` frame), and leaving everything when the connection ends.

The entries themselves and their TTLs are realtime.presence's; the hub's presence loop refreshes
`conn.presence_channels` while the connection lives.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from . import broker, metrics
from .channels import policy_of
from .conf import notifier_settings
from .connection import Connection
from .presence import get_presence

logger = logging.getLogger(__name__)


async def join(conn: Connection, channel: str) -> None:
    """Join the channel's presence (when its namespace has presence) as the connection's user."""
    policy = policy_of(channel)
    if policy is None or not policy.presence:
        return
    user = conn.user or ""
    conn.presence_channels.add(channel)
    first = await get_presence().join(channel, user, conn.id)
    if first and user and policy.presence_events:
        await broker.send_presence(channel, "join", user)


async def leave(conn: Connection, channel: str) -> None:
    """Leave the channel's presence; the `leave` frame follows after the debounce delay."""
    if channel not in conn.presence_channels:
        return
    conn.presence_channels.discard(channel)
    user = conn.user or ""
    await get_presence().leave(channel, user, conn.id)
    policy = policy_of(channel)
    if user and policy is not None and policy.presence_events:
        asyncio.get_running_loop().create_task(_announce_leave(channel, user))


async def leave_or_log(conn: Connection, channel: str) -> None:
    """Leave, or log and count the Redis error: the entry then expires on its own."""
    try:
        await leave(conn, channel)
    except (RedisError, OSError) as exc:
        logger.warning("presence leave failed: %s", exc, extra=conn.log_context)
        metrics.inc("notifier_redis_errors", operation="presence")


async def _announce_leave(channel: str, user: str) -> None:
    """After the debounce delay, announce the leave if the user has not come back."""
    await asyncio.sleep(notifier_settings.PRESENCE_LEAVE_DELAY_SECS)
    try:
        if await get_presence().user_gone(channel, user):
            await broker.send_presence(channel, "leave", user)
    except (RedisError, OSError) as exc:
        logger.warning("presence leave for %s failed: %s", channel, exc)
        metrics.inc("notifier_redis_errors", operation="presence")
