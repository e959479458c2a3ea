"""`make bench` at a tiny scale: every scenario runs end to end and loses or duplicates nothing.

Correctness only: no timing is asserted (the numbers of a smoke run mean nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

EXPECTED = {
    "ceiling": ["Node ws broadcast server", "Node http server"],
    "fanout": ["raw ASGI", "notifier (uvicorn, 1 process)"],
    "scaling": ["notifier, 1 process", "notifier, 2 processes"],
    "latency": ["raw ASGI", "notifier (uvicorn)"],
    "memory": ["raw ASGI", "notifier (uvicorn)"],
    "publish": ["raw ASGI POST", "POST /api/notify,", "POST /api/notify/batch", "NOTIFIER_REPLICA_ACKS=1"],
    "celery": ["queued no-op tasks", "queued tasks", "ack_emulation off"],
    "recovery": ["sockets resubscribe"],
    "servers": ["production", "permessage-deflate", "daphne"],
    "inbox": ["GET /api/inbox/counts", "GET /api/inbox (first page", "mark all read", "inbox: true, 10,000 users"],
    "push": ["Web Push: 50 pushes"],
    "scheduling": ["dispatch lag: 200 scheduled events/s", "backlog: 1,000 events due at one moment"],
    "personal": [
        "raw ASGI, 50 users one socket each",
        "Node ws, 50 users, as fast as acknowledged",
        "notifier (uvicorn), all 50 sockets drop and come back with since",
        "notifier (uvicorn), 50 users, as fast as acknowledged",
        "notifier (uvicorn), connect 50 sockets",
        "notifier (uvicorn), 50 idle sockets, one personal channel each",
    ],
    "cluster": [
        "one Redis, 1 process, 60 users one socket each",
        "one Redis, 4 processes, as fast as acknowledged",
        "3-master cluster, 4 processes, 60 users one socket each",
        "3-master cluster, 4 processes, as fast as acknowledged",
    ],
    "soak": [
        "notifier, 50 personal sockets, 20 events/s to random users, 5 reconnects/s with since",
        "raw ASGI, 50 personal sockets",
        "Node ws, 50 personal sockets",
    ],
    "tokens": ["raw ASGI POST /api/tokens", "Node POST /api/tokens", "notifier POST /api/tokens"],
}


@pytest.mark.timeout(400)
def test_every_scenario_runs_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=390,
    )
    assert run.returncode == 0, f"bench failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert report["failures"] == []
    rows = report["rows"]
    for scenario, setups in EXPECTED.items():
        found = [r["setup"] for r in rows if r["scenario"] == scenario]
        for setup in setups:
            assert any(setup in f for f in found), f"no {scenario!r} row for {setup!r} in {found}"
    for row in rows:
        if row["lost"] is not None:
            assert (row["lost"], row["duplicated"]) == (0, 0), row
    # The printed table has the same rows, and a target column.
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| scenario | setup | result |") and len(table) == len(rows) + 1
