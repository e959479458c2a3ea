"""The event record: its id, its time, and the one JSON encoding used on the wire. The frames
built from it are in realtime/frames.py."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON, the one encoding used on the wire: `json.dumps(value, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False)`, from one encoder made once (see `_make_dumps`)."""
    if type(value) is str:
        return _encode_string(value)
    return "".join(_encode(value, 0))


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_dumps() -> tuple[Callable[[str], str], Callable[[Any, int], Sequence[str]]]:
    """`json.dumps` builds a C encoder on every call, about half the time of encoding a small
    event's data; this one is built once. It does not track containers it is inside of: a
    cycle raises RecursionError (as too deep a nesting does) instead of ValueError. Where the
    C encoder is missing (not CPython), the same through `json.JSONEncoder`."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:  # pragma: no cover - CPython always has it
        slow = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False)
        return slow.encode, lambda value, _: [slow.encode(value)]
    # markers, default, encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan
    encode = make(None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    return json.encoder.encode_basestring, encode


_encode_string, _encode = _make_dumps()


def new_event_id() -> str:
    """A random (version 4) UUID, as hex."""
    return uuid.UUID(bytes=_random.take(16), version=4).hex


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as hex: event ids, epochs, connection ids."""
    return _random.take(nbytes).hex()


class _RandomPool:
    """The OS's random bytes, fetched 4 KB at a time. `os.urandom` releases the GIL, and taking
    it back behind a thread that runs Python (the database thread, during inbox stores) cost
    the event loop up to milliseconds per id: one call per 256 ids instead of one each."""

    SIZE = 4096

    def __init__(self) -> None:
        self._bytes = b""
        self._at = 0
        self._lock = threading.Lock()  # sync publishes take ids from other threads too

    def take(self, n: int) -> bytes:
        with self._lock:
            at = self._at
            if at + n > len(self._bytes):
                self._bytes, at = os.urandom(max(self.SIZE, n)), 0
            self._at = at + n
            return self._bytes[at : at + n]

    def forget(self) -> None:
        """After a fork: the child must not hand out the parent's next ids (nor wait on a lock
        a parent's thread held at the fork)."""
        self._bytes, self._at, self._lock = b"", 0, threading.Lock()


_random = _RandomPool()
os.register_at_fork(after_in_child=_random.forget)


def now() -> float:
    return time.time()


def rfc3339(moment: datetime | None) -> str | None:
    """An aware date and time as the API answers it: RFC 3339 in UTC, with "Z"."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
