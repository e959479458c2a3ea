"""Every server -> client frame, built here and nowhere else (WebSocket text; SSE wraps the
same text).

An event frame is encoded once per channel and written as-is to every socket. The offset and
epoch are only known once history has stored the event, so the frame is kept as a
`FrameTemplate` (`head` + offset + `,"epoch":"<epoch>"` + `tail`): history splices both in
atomically when it stores the frame, and `render` does the same to produce the identical text.
Epochs are hex strings, so they need no JSON escaping. The other frames are small JSON objects
whose first key is `type`. The hub hands frames to a connection by kind, with an event's
channel and position (realtime/connection.py), so no transport reads a frame to learn them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .events import dumps

if TYPE_CHECKING:  # history stores FrameTemplates: it imports this module
    from .history import Position

PING = '{"type":"ping"}'
SSE_PING = ": ping\n\n"  # an SSE comment: clients ignore it, proxies see traffic


def reply(kind: str, ref: Any = None, **fields: Any) -> str:
    """A server frame as JSON text; `ref` is echoed when the client sent one."""
    frame: dict[str, Any] = {"type": kind, **fields}
    if ref is not None:
        frame["ref"] = ref
    return dumps(frame)


def error(code: str, message: str, ref: Any = None, **fields: Any) -> str:
    return reply("error", ref, code=str(code), message=message, **fields)


def sse_message(kind: str, data: str, event_id: str | None = None) -> str:
    """One Server-Sent Events message: `event: <kind>`, a frame's text as its `data`."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"


def presence(kind: str, channel: str, user: str) -> str:
    """`join` or `leave` (`kind`): a user's first connection came to a channel, or its last left."""
    return reply(kind, channel=channel, user=user)


def closed(code: int) -> str:
    """SSE's last event, `event: close`, with the WebSocket close code the stream ended with."""
    return dumps({"code": code})


def subscribed(channel: str, position: Position, recovered: bool, ref: Any = None) -> str:
    """Where a subscription starts (DESIGN §5); `recovered: false` means "refetch your state"."""
    return reply("subscribed", ref, channel=channel, offset=position.offset, epoch=position.epoch, recovered=recovered)


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
