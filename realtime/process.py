"""This server process: its hubs (one per event loop), whether it is draining, and what SIGTERM
does. The one module above the hub and the metrics: nothing in realtime imports it but the
transports (consumers, sse), so there is no import circle (tests/test_layout.py).

Graceful shutdown: on SIGTERM every socket is closed with 4000 and the server exits. Clients
treat 4000 as transient, reconnect (to another process, behind the load balancer) and recover
from history. While the sockets close, `/readyz` answers 503 naming `draining`, so a load
balancer stops sending new connections, and the transports turn new ones away. The handler is
chained: once the sockets are closed (or after DRAIN_TIMEOUT_SECS) the process's last metrics
are flushed to Redis, then the server's own SIGTERM handler runs, so Uvicorn (or Twisted, under
Daphne) stops accepting and exits as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Any

from channels.layers import get_channel_layer

from . import metrics
from .codes import CloseCode
from .conf import notifier_settings
from .history import get_history
from .hub import Hub

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECS = 5.0
FLUSH_TIMEOUT_SECS = 2.0

_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()
_handler_installed = False
_draining = False


def existing_hubs() -> list[Hub]:
    """The hubs of this process (one per event loop; one in a server process)."""
    return list(_hubs.values())


metrics.hub_source = existing_hubs  # the gauges and hub counters read this process's hubs


def get_hub() -> Hub:
    """The hub of the running event loop (made on first use, which also chains the SIGTERM
    handler when this is the server's main thread)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        layer = get_channel_layer()
        if layer is None:
            raise RuntimeError("CHANNEL_LAYERS is not configured")
        hub = _hubs[loop] = Hub(
            layer, get_history(), notifier_settings.HEARTBEAT_SECS, notifier_settings.CHANNEL_LINGER_SECS
        )
        install_drain_handler()
    return hub


def is_draining() -> bool:
    """True once this process received SIGTERM (and is closing its sockets)."""
    return _draining


def set_draining(draining: bool) -> None:
    """What SIGTERM sets; tests set it to see the transports refuse and /readyz say so."""
    global _draining
    _draining = draining


def install_drain_handler() -> None:
    """Chain our SIGTERM handler in front of the server's (main thread only; once per process)."""
    global _handler_installed
    if _handler_installed or threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return  # no server handles SIGTERM here (e.g. tests in-process): nothing to chain to

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if _draining:
            return _chain(previous, signum, frame)  # a second SIGTERM: stop waiting
        set_draining(True)
        loop.call_soon_threadsafe(lambda: loop.create_task(_drain(previous, signum, frame)))

    signal.signal(signal.SIGTERM, on_sigterm)
    _handler_installed = True


async def _drain(previous: Any, signum: int, frame: FrameType | None) -> None:
    connections = [conn for hub in existing_hubs() for conn in hub.connections]
    logger.info("SIGTERM: closing %d connections with 4000", len(connections))
    for conn in connections:
        conn.close(CloseCode.SHUTDOWN)
    deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_SECS
    while any(hub.connections for hub in existing_hubs()) and asyncio.get_running_loop().time() < deadline:
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
