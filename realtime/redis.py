"""One Redis client per event loop, with a deliberately sized, blocking connection pool.

redis-py 8 raises MaxConnectionsError when a plain pool is exhausted (DESIGN §8); a
BlockingConnectionPool waits for a free connection instead, so a burst queues rather than fails.
"""

from __future__ import annotations

import asyncio
import os
import weakref

from redis import asyncio as aioredis

from .conf import notifier_settings

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def get_redis() -> aioredis.Redis:
    """The Redis client of the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            notifier_settings.REDIS_URL,
            max_connections=notifier_settings.REDIS_MAX_CONNECTIONS,
            timeout=notifier_settings.REDIS_SOCKET_TIMEOUT_SECS,
            socket_connect_timeout=notifier_settings.REDIS_CONNECT_TIMEOUT_SECS,
            socket_timeout=notifier_settings.REDIS_SOCKET_TIMEOUT_SECS,
            socket_keepalive=True,
            health_check_interval=10,
            client_name=f"notifier-{os.getpid()}",  # lets operators (and tests) tell processes apart
        )
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client
