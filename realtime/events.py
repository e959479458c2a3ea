"""The event record: its id, its time, and the one JSON encoding used on the wire. The frames
built from it are in realtime/frames.py."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON, the one encoding used on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def new_event_id() -> str:
    return uuid.uuid4().hex


def now() -> float:
    return time.time()
