"""Graceful shutdown: on SIGTERM, close every socket with 4000 and let the server exit.

Clients treat 4000 as transient, reconnect (to another process, behind the load balancer) and
recover from history. While the sockets close, `/readyz` answers 503 naming `draining`, so a
load balancer stops sending new connections. The handler is chained: once the sockets are
closed (or after DRAIN_TIMEOUT_SECS) the process's last metrics are flushed to Redis, then the
server's own SIGTERM handler runs, so Uvicorn (or Twisted, under Daphne) stops accepting and
exits as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import metrics
from .codes import CloseCode
from .conf import notifier_settings

if TYPE_CHECKING:
    from .hub import Hub

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECS = 5.0
FLUSH_TIMEOUT_SECS = 2.0
_installed = False
_draining = False


def is_draining() -> bool:
    """True once this process received SIGTERM (and is closing its sockets)."""
    return _draining


def install_drain_handler(hub: Hub) -> None:
    """Chain our SIGTERM handler in front of the server's (main thread only; once per process)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return  # no server handles SIGTERM here (e.g. tests in-process): nothing to chain to

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        global _draining
        if hub.draining:
            return _chain(previous, signum, frame)  # a second SIGTERM: stop waiting
        hub.draining = _draining = True
        loop.call_soon_threadsafe(lambda: loop.create_task(_drain(hub, previous, signum, frame)))

    signal.signal(signal.SIGTERM, on_sigterm)
    _installed = True


async def _drain(hub: Hub, previous: Any, signum: int, frame: FrameType | None) -> None:
    logger.info("SIGTERM: closing %d connections with 4000", len(hub.connections))
    for conn in list(hub.connections):
        conn.close(CloseCode.SHUTDOWN)
    deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_SECS
    while hub.connections and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    await _flush_metrics()
    _chain(previous, signum, frame)


async def _flush_metrics() -> None:
    """Send this process's last counts (at most a second's worth) and drop its gauges."""
    if notifier_settings.embedded:
        return
    try:
        await asyncio.wait_for(metrics.flush(final=True), FLUSH_TIMEOUT_SECS)
    except Exception as exc:  # noqa: BLE001 - Redis down: those counts are lost, exit anyway
        logger.warning("SIGTERM: last metrics flush failed: %s", exc)


def _chain(previous: Any, signum: int, frame: FrameType | None) -> None:
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
