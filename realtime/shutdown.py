"""Graceful shutdown: on SIGTERM, close every socket with 4000 and let the server exit.

Clients treat 4000 as transient, reconnect (to another process, behind the load balancer) and
recover from history. The handler is chained: once the sockets are closed (or after
DRAIN_TIMEOUT_SECS) the server's own SIGTERM handler runs, so Uvicorn (or Twisted, under
Daphne) stops accepting and exits as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from .codes import CloseCode

if TYPE_CHECKING:
    from .hub import Hub

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECS = 5.0
_installed = False


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
        if hub.draining:
            return _chain(previous, signum, frame)  # a second SIGTERM: stop waiting
        hub.draining = True
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
    _chain(previous, signum, frame)


def _chain(previous: Any, signum: int, frame: FrameType | None) -> None:
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
