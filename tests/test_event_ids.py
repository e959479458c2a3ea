"""Event ids, epochs and connection ids come from a pool of the OS's random bytes
(realtime/events.py): unique, shaped as before, and never shared by a forked child."""

from __future__ import annotations

import os
import uuid

from realtime import events


def test_event_ids_are_distinct_version_4_uuids_across_refills() -> None:
    ids = [events.new_event_id() for _ in range(3 * events._RandomPool.SIZE // 16 + 7)]  # three refills
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(hex=i).version == 4 and len(i) == 32 for i in ids)
    assert len(events.random_hex(4)) == 8 and len(events.random_hex(10_000)) == 20_000


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    events.new_event_id()  # the pool holds bytes the parent has not handed out yet
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(writer, "".join(events.new_event_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    theirs = os.read(reader, 1000).decode()
    os.close(reader)
    mine = "".join(events.new_event_id() for _ in range(5))
    assert len(theirs) == len(mine) == 160 and theirs != mine
