"""The inbox's counters (realtime/inbox.py, InboxCounter): after every change, on PostgreSQL and
on the embedded mode's SQLite, they equal what counting the rows gives; concurrent writers on
PostgreSQL leave them exact (and do not deadlock); `recount_inbox` and the migration that added
them set them from the rows."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count, Q
from django.test import override_settings
from django.utils import timezone

from realtime import inbox
from realtime.models import InboxCounter, Notification

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 12  # NOTIFIER_INBOX_MAX_PER_USER in the walks: retention runs often


def counted(users: list[str]) -> dict[str, dict[str, int]]:
    """Each user's counts by counting their rows, and `stored`: what the counters must say."""
    live = Q(archived_at__isnull=True)
    found = {
        row.pop("user"): row
        for row in Notification.objects.filter(user__in=users)
        .values("user")
        .annotate(
            unread=Count("id", filter=live & Q(read_at__isnull=True)),
            unseen=Count("id", filter=live & Q(seen_at__isnull=True)),
            total=Count("id", filter=live),
            stored=Count("id"),
        )
        .order_by()
    }
    return {user: found.get(user, {"unread": 0, "unseen": 0, "total": 0, "stored": 0}) for user in users}


def kept(users: list[str]) -> dict[str, dict[str, int]]:
    """What the counters say (with `stored`, which the API does not answer)."""
    counts = inbox.counts_of(users)
    stored = dict(InboxCounter.objects.filter(user__in=users).values_list("user", "stored"))
    return {user: {**counts[user], "stored": stored.get(user, 0)} for user in users}


def walk(seed: int, steps: int = 250) -> None:
    """A random sequence of every kind of change to three users' inboxes (stores with retries and
    retention, marks by ids, all and category, deletes, take-backs, expiry, erasure), checking the
    counters against the rows after each. Runs here and, in a subprocess, on SQLite."""
    rng = random.Random(seed)
    users = ["w1", "w2", "w3"]
    events: list[str] = []
    with override_settings(NOTIFIER={**settings.NOTIFIER, "INBOX_MAX_PER_USER": LIMIT}):
        for step in range(steps):
            op = rng.choice(["store"] * 4 + ["mark"] * 3 + ["mark_all", "delete", "forget", "age", "erase"])
            answered: dict[str, int] | None = None
            user = rng.choice(users)
            if op == "store":
                rows = []
                for _ in range(rng.randint(1, 4)):
                    retry = events and rng.random() < 0.2  # an event already stored: kept as it is
                    event_id = rng.choice(events) if retry else uuid.uuid4().hex
                    events.append(event_id)
                    category = rng.choice([None, "orders", "social"])
                    for target in rng.sample(users, rng.randint(1, 3)):
                        rows.append(inbox.Row(target, event_id, "e", {"step": step}, category, f"user:{target}"))
                stored = inbox.store(rows)
                answered = stored.counts.get(user)
            elif op == "mark":
                ids = rng.sample(events, min(len(events), rng.randint(0, 6))) + [uuid.uuid4().hex]
                _, answered = inbox.mark(user, rng.choice(inbox.MARKS), ids)
            elif op == "mark_all":
                category = rng.choice([None, "orders", "social"])
                _, answered = inbox.mark(user, rng.choice(inbox.MARKS_FOR_ALL), None, category)
            elif op == "delete" and events:
                answered = inbox.delete(user, rng.choice(events))
            elif op == "forget" and events:
                inbox.forget([inbox.Row(user, e, "e", None, None, "") for e in rng.sample(events, min(3, len(events)))])
            elif op == "age":
                old = list(Notification.objects.order_by("?").values_list("id", flat=True)[:3])
                Notification.objects.filter(id__in=old).update(created_at=timezone.now() - timedelta(days=100))
                if rng.random() < 0.5:
                    inbox.expire(batch=2)  # else the next store for their users drops them
            elif op == "erase" and rng.random() < 0.3:
                inbox.erase(user)
            truth = counted(users)
            assert kept(users) == truth, f"step {step} ({op})"
            if answered is not None:
                assert answered == {k: v for k, v in truth[user].items() if k != "stored"}, f"step {step} ({op})"
            assert all(c["stored"] <= LIMIT for c in truth.values()), f"step {step} ({op})"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_counters_follow_every_change_on_postgresql(seed: int) -> None:
    assert connection.vendor == "postgresql"
    walk(seed)


def test_the_counters_follow_every_change_on_sqlite(tmp_path: Path) -> None:
    """The embedded mode's database: the same walk in a process of its own on a fresh SQLite file."""
    script = (
        "import django; django.setup();"
        "from django.core.management import call_command; call_command('migrate', verbosity=0);"
        "from django.db import connection; assert connection.vendor == 'sqlite';"
        "from tests.test_inbox_counts import walk; walk(4); walk(5); print('walked')"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "notifier.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "REDIS_URL": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and "walked" in done.stdout, done.stderr[-3000:]


def test_concurrent_changes_of_one_users_inbox_keep_the_counters_exact() -> None:
    """Four threads, each with its own PostgreSQL connection, store for overlapping users (in
    different orders), mark, delete and expire at once: no deadlock, and the counts are right."""
    users = ["c1", "c2", "c3", "c4"]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(n: int) -> None:
        rng = random.Random(n)
        try:
            start.wait()
            for _ in range(60):
                event_id = uuid.uuid4().hex
                targets = rng.sample(users, 3)
                inbox.store([inbox.Row(u, event_id, "e", None, "orders", f"user:{u}") for u in targets])
                user = rng.choice(users)
                inbox.mark(user, rng.choice(inbox.MARKS_FOR_ALL) if rng.random() < 0.3 else "read", None)
                inbox.mark(user, "unread", [event_id])
                if rng.random() < 0.2:
                    inbox.delete(user, event_id)
                if rng.random() < 0.1:
                    inbox.expire()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    with override_settings(NOTIFIER={**settings.NOTIFIER, "INBOX_MAX_PER_USER": 30}):  # here: settings are global
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert not errors, errors
    assert kept(users) == counted(users)
    assert Notification.objects.filter(user__in=users).exists()


def test_recount_sets_the_counters_from_rows_written_around_the_module() -> None:
    Notification.objects.bulk_create(
        [Notification(user="r1", event_id=f"e{i}", event="e", channel="user:r1") for i in range(5)]
        + [Notification(user="r2", event_id="x", event="e", channel="user:r2", read_at=timezone.now())]
    )
    InboxCounter.objects.create(user="r3", unread=7, unseen=7, total=7, stored=7)  # its rows are gone
    assert inbox.counts_of(["r1"])["r1"]["unread"] == 0
    call_command("recount_inbox", "r1")
    assert kept(["r1", "r2", "r3"])["r2"]["total"] == 0  # not asked for
    call_command("recount_inbox")
    assert kept(["r1", "r2", "r3"]) == counted(["r1", "r2", "r3"])


def test_the_migration_counts_the_rows_stored_before_it() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("realtime", "0001_inbox")])
    try:
        old = executor.loader.project_state([("realtime", "0001_inbox")]).apps.get_model("realtime", "Notification")
        now = timezone.now()
        old.objects.bulk_create(
            [
                old(user="m1", event_id="a", event="e", channel="user:m1"),
                old(user="m1", event_id="b", event="e", channel="user:m1", seen_at=now),
                old(user="m1", event_id="c", event="e", channel="user:m1", read_at=now, seen_at=now),
                old(user="m1", event_id="d", event="e", channel="user:m1", archived_at=now),
                old(user="m2", event_id="a", event="e", channel="user:m2"),
            ]
        )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    expected: dict[str, Any] = {
        "m1": {"unread": 2, "unseen": 1, "total": 3, "stored": 4},
        "m2": {"unread": 1, "unseen": 1, "total": 1, "stored": 1},
    }
    assert kept(["m1", "m2"]) == expected == counted(["m1", "m2"])
