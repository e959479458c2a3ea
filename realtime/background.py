"""Work handed to Celery workers from anywhere (a request, the event loop, another task),
and in the embedded mode (tasks run eagerly, no worker) to a thread of this process, so it
never holds up the caller: Web Push and webhook deliveries."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import current_app
from django.db import connections

logger = logging.getLogger(__name__)


def queue(task: str, kwargs: dict[str, Any], countdown: float = 0) -> None:
    """Queue `task` (by name) to run in `countdown` seconds. Sync code sends it at once (a
    broker round trip); the embedded mode runs it in a thread after the countdown."""
    if current_app.conf.task_always_eager:
        threading.Thread(target=_run_here, args=(task, kwargs, countdown), name="notifier-task", daemon=True).start()
        return
    current_app.send_task(task, kwargs=kwargs, countdown=countdown or None)


def queue_soon(task: str, kwargs: dict[str, Any], on_failure: Callable[[BaseException], None]) -> None:
    """`queue` from the event loop without waiting for the broker: the send runs in the
    loop's executor; a failure is handed to `on_failure` (logged there)."""
    if current_app.conf.task_always_eager:
        queue(task, kwargs)
        return
    sent = asyncio.get_running_loop().run_in_executor(None, lambda: queue(task, kwargs))

    def done(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            on_failure(future.exception())  # type: ignore[arg-type]  # not None: checked

    sent.add_done_callback(done)


def _run_here(task: str, kwargs: dict[str, Any], countdown: float) -> None:
    """Run a task in this process (embedded mode), after `countdown` seconds."""
    if countdown:
        threading.Event().wait(countdown)
    try:
        current_app.loader.import_default_modules()  # the tasks' module (a server process has not)
        current_app.tasks[task].apply(kwargs=kwargs, throw=True)
    except Exception:
        logger.exception("%s failed", task)
    finally:
        connections.close_all()
