"""The inbox scenario of `make bench` (issue 13), on a PostgreSQL database of its own.

1,000,000 stored notifications over 10,000 users, one of them holding 10,000 unread, are
written with one `INSERT … SELECT generate_series` (then ANALYZE, and `manage.py recount_inbox`
for their counters). Against one Uvicorn process:

- counts and the first page over HTTP, 500 requests each on one keep-alive connection, p50 and
  p99, each beside the same SQL run 500 times through psycopg in this process;
- mark-all-read of the 10,000 unread (three times, unread again in between);
- storing: `POST /api/notify/batch` (100 events, each to one of 10,000 users) and single
  `POST /api/notify`, each without and with `inbox: true`, through the load generator.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import jwt

from .services import BenchError, manage, service_env

if TYPE_CHECKING:
    from .run import Bench

USERS = 10_000
HEAVY = "bench-heavy"  # the user with 10,000 unread
HEAVY_UNREAD = 10_000
TOTAL = 1_000_000
SAMPLES = 500
JWT_SECRET = "bench-inbox-secret-long-enough-for-hs256"  # noqa: S105 - a throwaway local run
TARGETS = {"counts_p99_ms": 10.0, "page_p99_ms": 20.0, "mark_all_ms": 200.0, "batch_nps": 10_000.0, "single_ratio": 0.5}

COUNTS_SQL = 'SELECT unread, unseen, total FROM realtime_inboxcounter WHERE "user" = %s'
PAGE_SQL = """
SELECT * FROM realtime_notification WHERE "user" = %s AND archived_at IS NULL ORDER BY id DESC LIMIT 21
"""


@contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """A new database on the machine's PostgreSQL (local socket), dropped afterwards; its URL."""
    import psycopg
    from psycopg import sql

    try:
        admin = psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if "does not exist" in str(exc) and os.geteuid() == 0 and shutil.which("runuser"):
            role = os.environ.get("USER") or "root"
            subprocess.run(  # noqa: S603
                ["runuser", "-u", "postgres", "--", "psql", "-qc", f'CREATE ROLE "{role}" LOGIN CREATEDB'],  # noqa: S607
                check=True,
                cwd="/",
                timeout=30,
            )
            admin = psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5)
        else:
            raise BenchError(f"the inbox scenario needs PostgreSQL on its local socket: {exc}") from exc
    with admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgres:///{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fill(url: str, smoke: bool) -> int:
    """The stored notifications; how many."""
    import psycopg

    total, heavy = (2_000, 200) if smoke else (TOTAL, HEAVY_UNREAD)
    others = total - heavy
    with psycopg.connect(url.replace("postgres:///", "dbname="), autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO realtime_notification
              ("user", event_id, event, data, category, channel, created_at, read_at, seen_at, archived_at)
            SELECT 'u' || (g %% %(users)s), md5(g::text), 'bench', jsonb_build_object('s', g),
                   (ARRAY['orders', 'social', 'billing'])[1 + g %% 3], 'user:u' || (g %% %(users)s),
                   now() - make_interval(secs => g), CASE WHEN g %% 2 = 0 THEN now() END,
                   CASE WHEN g %% 2 = 0 THEN now() END, NULL
            FROM generate_series(1, %(others)s) AS g
            """,
            {"users": USERS, "others": others},
        )
        conn.execute(
            """
            INSERT INTO realtime_notification
              ("user", event_id, event, data, category, channel, created_at, read_at, seen_at, archived_at)
            SELECT %(user)s::varchar, md5('heavy' || g), 'bench', jsonb_build_object('s', g), 'orders',
                   'user:' || %(user)s::text, now() - make_interval(secs => g), NULL, NULL, NULL
            FROM generate_series(1, %(heavy)s) AS g
            """,
            {"user": HEAVY, "heavy": heavy},
        )
        conn.execute("ANALYZE realtime_notification")
    return total


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def timed(call: Callable[[], Any], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


class Http:
    """One keep-alive connection to the server, as a browser tab holds it."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise BenchError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data)


def run(bench: Bench, Row: Any, fmt: Callable[..., str]) -> None:  # noqa: N803 - bench.run's Row class
    """The scenario's rows; `Row` and `fmt` are bench/run.py's (it runs as __main__)."""
    samples = 50 if bench.smoke else SAMPLES
    with postgres_database(f"notifier_bench_inbox_{os.getpid()}") as url:
        env = service_env(bench.redis.url, bench.db, NOTIFIER_JWT_SECRET=JWT_SECRET)
        env["DATABASE_URL"] = url
        manage(env, "migrate", "--verbosity", "0")
        key = manage(env, "create_api_key", "bench-inbox").strip().splitlines()[-1]
        stored = fill(url, bench.smoke)
        manage(env, "recount_inbox")
        token = jwt.encode({"sub": HEAVY, "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256")
        import psycopg

        with bench.servers("uvicorn", 1, **{"DATABASE_URL": url, "NOTIFIER_JWT_SECRET": JWT_SECRET}) as (server,):
            client = Http(server.port, token)
            setup = (
                f"{stored:,} stored, {USERS:,} users; one user with {HEAVY_UNREAD if not bench.smoke else 200:,} unread"
            )
            with psycopg.connect(url.replace("postgres:///", "dbname=")) as db:
                for label, path, query, target in (
                    ("GET /api/inbox/counts", "/api/inbox/counts", COUNTS_SQL, TARGETS["counts_p99_ms"]),
                    ("GET /api/inbox (first page of 20)", "/api/inbox", PAGE_SQL, TARGETS["page_p99_ms"]),
                ):
                    timed(lambda: client.call("GET", path), 20)  # noqa: B023 - warm-up
                    p50, p99 = percentiles(timed(lambda: client.call("GET", path), samples))  # noqa: B023
                    sql_p50, sql_p99 = percentiles(
                        timed(lambda: db.execute(query, (HEAVY,)).fetchall(), samples)  # noqa: B023
                    )
                    bench.add(
                        Row(
                            "inbox",
                            f"{label}, {setup}",
                            f"p50 {p50:.2f} / p99 {p99:.2f} ms",
                            f"the same SQL: p50 {sql_p50:.2f} / p99 {sql_p99:.2f} ms; target p99 <= {target:.0f} ms",
                            target_met=p99 <= target,
                        )
                    )
                marks = []
                for _ in range(3):
                    db.execute(
                        'UPDATE realtime_notification SET read_at = NULL, seen_at = NULL WHERE "user" = %s', (HEAVY,)
                    )  # and its counters (none of its rows is archived):
                    db.execute(
                        'UPDATE realtime_inboxcounter SET unread = total, unseen = total WHERE "user" = %s', (HEAVY,)
                    )
                    db.commit()
                    started = time.perf_counter()
                    answer = client.call("POST", "/api/inbox/mark", {"all": True, "as": "read"})
                    marks.append((time.perf_counter() - started) * 1000)
                updated = answer["updated"]
            best, worst = min(marks), max(marks)
            bench.add(
                Row(
                    "inbox",
                    f"POST /api/inbox/mark all read, {updated:,} unread",
                    f"{statistics.median(marks):.0f} ms",
                    f"3 runs: {best:.0f}-{worst:.0f} ms; target <= {TARGETS['mark_all_ms']:.0f} ms",
                    target_met=worst <= TARGETS["mark_all_ms"],
                )
            )
            secs = bench.scale.publish_secs
            store = {"mode": "http", "key": key, "kind": "notify", "seconds": secs, "users": USERS}
            batch_rates = {}
            for inbox in (False, True):  # without the inbox first: the personal publish path alone
                result = bench.loadgen(
                    {**store, "url": f"{server.http}/api/notify/batch", "concurrency": 4, "batch": 100, "inbox": inbox}
                )
                batch_rates[inbox] = result["events_per_sec"]
                lost = int(result.get("errors", 0))
                shape = "inbox: true" if inbox else "no inbox"
                compared = f"p99 {result['latency']['p99_ms']} ms"
                if inbox:
                    ratio = batch_rates[True] / batch_rates[False]
                    compared += f"; {ratio:.2f}x without inbox; target >= {TARGETS['batch_nps']:,.0f}"
                bench.add(
                    Row(
                        "inbox",
                        f"POST /api/notify/batch (100 events, {shape}, 10,000 users), 4 in flight",
                        fmt(result["events_per_sec"], "notifications/s" if inbox else "events/s"),
                        compared,
                        lost,
                        target_met=(result["events_per_sec"] >= TARGETS["batch_nps"] and lost == 0) if inbox else None,
                        data=result,
                    )
                )
            rates = {}
            for inbox in (False, True):
                result = bench.loadgen({**store, "url": f"{server.http}/api/notify", "concurrency": 16, "inbox": inbox})
                rates[inbox] = result["requests_per_sec"]
                lost = int(result.get("errors", 0))
                ratio = rates[True] / rates[False] if inbox else None
                shape = "inbox: true" if inbox else "no inbox"
                bench.add(
                    Row(
                        "inbox",
                        f"POST /api/notify to one of 10,000 users, {shape}, 16 in flight",
                        fmt(result["requests_per_sec"], "req/s"),
                        (
                            f"{ratio:.2f}x without inbox; target >= {TARGETS['single_ratio']}x; "
                            if ratio is not None
                            else ""
                        )
                        + f"p99 {result['latency']['p99_ms']} ms",
                        lost,
                        target_met=(ratio >= TARGETS["single_ratio"] and lost == 0) if ratio is not None else None,
                        data=result,
                    )
                )
