"""The event record and its wire encoding.

An event frame is encoded once per channel and written as-is to every socket. The offset and
epoch are only known once history has stored the event, so the frame is kept as a
`FrameTemplate` (`head` + offset + `,"epoch":"<epoch>"` + `tail`): history splices both in
atomically when it stores the frame, and `render` does the same to produce the identical text.
Epochs are hex strings, so they need no JSON escaping.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON, the one encoding used on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def new_event_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class FrameTemplate:
    """An event frame with a hole where its offset goes."""

    head: str
    tail: str

    def render(self, offset: int, epoch: str) -> str:
        return f'{self.head}{offset},"epoch":"{epoch}"{self.tail}'


def event_template(
    channel: str, event_id: str, event: str, data_json: str, ts: float, sender: str | None = None
) -> FrameTemplate:
    """The frame template of one event on one channel; `data_json` is already encoded."""
    head = '{"type":"event","channel":' + dumps(channel) + ',"offset":'
    tail = ',"id":' + dumps(event_id) + ',"event":' + dumps(event) + ',"data":' + data_json
    if sender is not None:
        tail += ',"sender":' + dumps(sender)
    tail += ',"ts":' + repr(round(ts, 3)) + "}"
    return FrameTemplate(head, tail)


def now() -> float:
    return time.time()
