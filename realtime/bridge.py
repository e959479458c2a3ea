"""Run the async publishing path from sync code (DRF views, Celery tasks, management commands).

Under the ASGI server a sync view runs in a thread that asgiref links to the server's loop, so
`async_to_sync` runs the coroutine there. Anywhere else (a Celery worker) `async_to_sync` would
start a new event loop, and with it new Redis connections, on every call (channels-redis
#266/#332). There we keep one long-lived loop in a daemon thread per process instead.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from django.db import close_old_connections

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The loop of the ASGI server that called us through sync_to_async, if any."""
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop: asyncio.AbstractEventLoop | None = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return loop if loop is not None and loop.is_running() else None


def background_loop() -> asyncio.AbstractEventLoop:
    """This process's long-lived publishing loop (a fresh one after fork)."""
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="notifier-loop", daemon=True)
            thread.start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


def run_sync(func: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
    """Call the coroutine function `func` from sync code and return its result."""
    if _server_loop() is not None:
        return async_to_sync(func)(*args, **kwargs)
    future = asyncio.run_coroutine_threadsafe(_call(func, *args, **kwargs), background_loop())
    return future.result()


async def _call(func: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
    return await func(*args, **kwargs)


async def in_thread(func: Callable[..., T], *args: object) -> T:
    """Database work from the event loop, in a worker thread with fresh connections (closed
    after, so no thread keeps one open)."""

    def run() -> T:
        close_old_connections()
        try:
            return func(*args)
        finally:
            close_old_connections()

    return await sync_to_async(run, thread_sensitive=False)()
