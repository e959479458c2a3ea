"""Noticing history that went backwards: channels moved to a new epoch after a Redis failover or
restore (see realtime.history). Each move is counted (`notifier_epoch_changes`, by reason), and
each process logs one warning per new Redis master, a moment after the first move, with the
number of channels it moved by then: a failover shows up once per process, not once per channel.
"""

from __future__ import annotations

import asyncio
import logging

from . import metrics

logger = logging.getLogger(__name__)

MASTER_CHANGED = "master_changed"  # the history was written under another Redis master
HISTORY_BEHIND = "history_behind"  # the history is behind what a hub already delivered
SETTLE_SECS = 2.0  # moves seen this soon after the first are counted in its log line

_moved: dict[str, int] = {}  # current master -> channels this process moved under it


def noticed(master: str, channels: int, reason: str) -> None:
    """This process moved `channels` channels to a new epoch while `master` was the master."""
    metrics.inc("notifier_epoch_changes", channels, reason=reason)
    first = master not in _moved
    _moved[master] = _moved.get(master, 0) + channels
    if not first:
        return
    try:
        asyncio.get_running_loop().call_later(SETTLE_SECS, _log, master, reason)
    except RuntimeError:  # no event loop (a sync caller): say it now
        _log(master, reason)


def _log(master: str, reason: str) -> None:
    logger.warning(
        "Redis master changed (now %s) or its data went back (%s): %d channels moved to a new epoch; "
        "their subscribers and resuming clients are told recovered:false. Events acknowledged "
        "under the previous master may be lost (see docs/deploy.md, Failover).",
        master[:12],
        reason,
        _moved.get(master, 0),
    )
