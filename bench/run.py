"""`make bench`: notifier in production mode under load, against a raw ASGI baseline.

Starts its own redis-server, a migrated SQLite database with an API key, Uvicorn processes
(the documented production command), a Celery worker, and the Node load generator in
bench/loadgen/, all on 127.0.0.1; prints one table. See docs/benchmarks.md.

    .venv/bin/python bench/run.py                      # everything (about 35 minutes, 15 of them the soak)
    .venv/bin/python bench/run.py --smoke              # every scenario at a tiny scale
    .venv/bin/python bench/run.py --only fanout,latency --subscribers 1000
    make bench BENCH=fanout SUBSCRIBERS=1000           # the same through make

Profiles: `--profile DIR` records py-spy stacks of each loaded server; `bench/profile.py` sums them.

Scenarios: ceiling (the load generator against a minimal Node ws server), fanout (raw ASGI
vs notifier), scaling (1 and 2 server processes), latency, memory, publish (the HTTP API),
celery, recovery, servers (Daphne and Uvicorn's WebSocket backends, compression off/on),
layers, inbox, push, scheduling, tokens, personal (one socket per user, beside the plain app and
a Node ws server: events, connects, idle memory, a reconnect storm), soak (personal channels
with churn for --soak-minutes: memory slopes), cluster (the personal shape on one Redis and on a
three-master Redis Cluster, 4 processes each: docs/capacity.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.services import (  # noqa: E402
    BIN,
    BenchError,
    LoadGen,
    Redis,
    RedisStats,
    Server,
    Worker,
    ensure_loadgen,
    history_of,
    manage,
    per_channel_and_per_event,
    post_json,
    raise_fd_limit,
    server_available,
    service_env,
)

SCENARIOS = [
    "ceiling",
    "fanout",
    "scaling",
    "latency",
    "memory",
    "publish",
    "celery",
    "recovery",
    "servers",
    "layers",
    "inbox",
    "push",
    "scheduling",
    "tokens",
    "personal",
    "cluster",
    "soak",
]

TARGETS = {
    "fanout_ratio": 0.85,  # x raw ASGI frames/s
    "latency_p99_ms": 30.0,
    "memory_kib_per_conn": 25.0,
    "notify_rps": 1700.0,
    "batch_eps": 20_000.0,
    "celery_eps": 1000.0,
    "tokens_per_sec": 2000.0,
    "personal_kb_per_socket": 16.0,
    "celery_vs_noop": 0.7,  # x a no-op task's rate on the same worker
    "notify_vs_raw": 0.5,  # POST /api/notify, x the plain app's POST rate
    "latency_p99_vs_raw": 1.1,  # broadcast p99, x the plain app's
}
# Seconds the personal scenario's sockets stay idle after connecting, while the server's RSS is read.
PERSONAL_PAUSE_SECS = 2.5
# The personal and soak scenarios' NOTIFIER_JWT_SECRET, with which the load generator mints tokens.
PERSONAL_JWT_SECRET = "bench-personal-secret-long-enough-for-hs256"  # noqa: S105 - a throwaway local run


@dataclass
class Row:
    scenario: str
    setup: str
    result: str
    compare: str = ""
    lost: int | None = 0
    duplicated: int | None = 0
    target_met: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scale:
    fanout_sizes: list[int]
    scaling_sizes: list[int]
    frames_per_run: int
    latency_subscribers: int
    latency_secs: float
    memory_connections: int
    publish_secs: float
    celery_tasks: int
    recovery_subscribers: int
    recovery_events: int
    servers_subscribers: int
    repeat: int

    @classmethod
    def full(cls) -> Scale:
        return cls([1000, 10_000], [100, 1000, 10_000], 600_000, 1000, 30, 10_000, 10, 5000, 200, 1000, 1000, 1)

    @classmethod
    def smoke(cls) -> Scale:
        return cls([20], [20], 400, 20, 1.5, 20, 1.5, 40, 5, 40, 20, 1)


def slope_per_minute(points: list[tuple[float, int]]) -> float:
    """The least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(p[0] for p in points) / len(points)
    mean_v = sum(p[1] for p in points) / len(points)
    spread = sum((p[0] - mean_t) ** 2 for p in points)
    if spread == 0:
        return 0.0
    return 60 * sum((p[0] - mean_t) * (p[1] - mean_v) for p in points) / spread


def fmt(value: float, unit: str = "") -> str:
    if value >= 100:
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


class Bench:
    def __init__(
        self, scale: Scale, workdir: Path, smoke: bool, profile: Path | None = None, soak_minutes: float = 15.0
    ) -> None:
        self.scale = scale
        self.workdir = workdir
        self.smoke = smoke
        self.profile = profile
        self._profiles = 0
        self.rows: list[Row] = []
        self.redis = Redis(workdir)
        self.db = workdir / "bench.sqlite3"
        self.env = service_env(self.redis.url, self.db)
        manage(self.env, "migrate", "--verbosity", "0")
        self.key = manage(self.env, "create_api_key", "bench").strip().splitlines()[-1]
        self._api: Server | None = None
        self._channel = 0
        self.raw_fanout: dict[int, float] = {}
        self.soak_minutes = soak_minutes

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._api is not None:
            self._api.stop()
        self.redis.stop()

    def channel(self, name: str) -> str:
        self._channel += 1
        return f"bench.{name}.{os.getpid()}.{self._channel}"

    @property
    def api(self) -> Server:
        """The process the fan-out scenarios publish through (POST /api/notify)."""
        if self._api is None or not self._api.alive():
            self._api = Server("uvicorn", self.env, self.workdir)
        return self._api

    @contextmanager
    def servers(self, kind: str, count: int = 1, **extra_env: str) -> Iterator[list[Server]]:
        started: list[Server] = []
        try:
            for _ in range(count):
                started.append(Server(kind, {**self.env, **extra_env}, self.workdir))
            yield started
        finally:
            for server in started:
                server.stop()

    def loadgen(
        self, config: dict[str, Any], watch: list[Server] | None = None, at_ready: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """Run the load generator; with `watch`, also the CPU those servers used meanwhile
        (from its "ready", or from `at_ready`'s return, to its result: one core = 100)."""
        gen = LoadGen(config, self.workdir)
        try:
            ready = gen.ready()
            if ready.get("connect_errors"):
                print(f"  ! {ready['connect_errors']} connections failed", file=sys.stderr)
            if at_ready is not None:
                at_ready()
            before = [(p.cpu_seconds(), time.monotonic()) for p in watch or []]
            with self.profiled(watch or [], config):
                result = gen.result()
            after = [(p.cpu_seconds(), time.monotonic()) for p in watch or []]
        finally:
            gen.kill()
        if "error" in result:
            raise BenchError(f"load generator: {result['error']}; see {gen.stderr_path}")
        if watch:
            result["server_cpu_percent"] = [
                round(100 * (c1 - c0) / max(1e-9, t1 - t0)) for (c0, t0), (c1, t1) in zip(before, after, strict=True)
            ]
        return result

    @contextmanager
    def profiled(self, servers: list[Server], config: dict[str, Any]) -> Iterator[None]:
        """With --profile, py-spy samples each watched server while the load runs: one
        collapsed-stack file per server and load, summarised by bench/profile.py. Sampling pauses
        the server (`--nonblocking` gave torn stacks), so a profiled run's figures are not quoted."""
        if not self.profile or not servers:
            yield
            return
        spies = []
        for server in servers:
            self._profiles += 1
            label = f"{self._profiles:02d}-{server.kind}-{config.get('mode')}-{config.get('kind', '')}"
            out = self.profile / f"{label}.txt"
            argv = [str(BIN / "py-spy"), "record", "--pid", str(server.pid), "--rate", "200", "--format", "raw"]
            argv += ["--output", str(out)]
            spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))  # noqa: S603 - our own argv
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(timeout=60)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        met = "" if row.target_met is None else (" (target met)" if row.target_met else " (TARGET MISSED)")
        print(f"  {row.scenario:10} {row.setup:48} {row.result:>22} {row.compare}{met}", flush=True)

    def fanout_run(
        self,
        urls: list[str],
        protocol: str,
        subscribers: int,
        publish: dict[str, Any],
        deflate: bool = False,
        steady: bool = False,
        watch: list[Server] | None = None,
    ) -> dict[str, Any]:
        """Events as fast as they are absorbed: a window of about 20,000 frames in flight, topped
        up in bursts of half the window (or, `steady`, one event at a time)."""
        events = max(10, round(self.scale.frames_per_run / subscribers))
        window = max(4, min(64, 20_000 // subscribers))
        return self.loadgen(
            {
                "mode": "fanout",
                "ws": urls,
                "subscribers": subscribers,
                "protocol": protocol,
                "channel": publish.get("channel", "bench"),
                "publish": publish,
                "events": events,
                "warmup": min(5, events),
                "window": window,
                "burst": 1 if steady else max(1, window // 2),
                "deflate": deflate,
                "max_secs": 240,
            },
            watch,
        )

    def notify_publisher(self, channel: str) -> dict[str, Any]:
        return {"kind": "notify", "url": f"{self.api.http}/api/notify", "key": self.key, "channel": channel}

    def raw_publisher(self) -> dict[str, Any]:
        return {"kind": "redis", "port": self.redis.port, "channel": "raw-bench"}

    def ours(
        self, kind: str, subscribers: int, processes: int = 1, deflate: bool = False, steady: bool = False
    ) -> dict[str, Any]:
        with self.servers(kind, processes) as procs:
            channel = self.channel("fanout")
            publisher = self.notify_publisher(channel)
            return self.fanout_run([p.ws for p in procs], "notifier", subscribers, publisher, deflate, steady, procs)

    def raw(self, subscribers: int, processes: int = 1, steady: bool = False) -> dict[str, Any]:
        with self.servers("raw", processes) as procs:
            return self.fanout_run(
                [p.ws for p in procs], "raw", subscribers, self.raw_publisher(), steady=steady, watch=procs
            )

    @staticmethod
    def losses(result: dict[str, Any]) -> tuple[int, int]:
        lost = int(result.get("lost", 0)) + int(result.get("connect_errors", 0))
        duplicated = int(result.get("duplicated", 0)) + int(result.get("out_of_order", 0))
        return lost, duplicated

    # -- scenarios -----------------------------------------------------------------------------

    def ceiling(self) -> None:
        """The load generator against a minimal Node ws server: what it can absorb at most."""
        sizes = sorted({*self.scale.fanout_sizes})
        with self.servers("node") as (node,):
            for size in sizes:
                for steady in (False, True):
                    publish = {"kind": "http", "url": f"{node.http}/publish", "channel": "bench"}
                    result = self.fanout_run([node.ws], "raw", size, publish, steady=steady)
                    lost, dup = self.losses(result)
                    how = "one event at a time" if steady else "bursts"
                    self.add(
                        Row(
                            "ceiling",
                            f"Node ws broadcast server, {size:,} subs, {how}",
                            fmt(result["frames_per_sec"], "frames/s"),
                            f"load generator CPU {result.get('cpu_percent', 0):.0f}%",
                            lost,
                            dup,
                            data=result,
                        )
                    )
            result = self.loadgen(
                {
                    "mode": "http",
                    "url": f"{node.http}/api/notify",
                    "kind": "notify",
                    "channel": "bench",
                    "concurrency": 16,
                    "seconds": self.scale.publish_secs,
                }
            )
            self.add(
                Row(
                    "ceiling",
                    "Node http server, POST, 16 in flight",
                    fmt(result["requests_per_sec"], "req/s"),
                    "load generator ceiling",
                    data=result,
                )
            )

    def fanout(self) -> None:
        """Raw ASGI vs notifier (1 Uvicorn process), interleaved, at each size, with events in
        bursts and one at a time."""
        for size in self.scale.fanout_sizes:
            for steady in (False,) if self.smoke else (False, True):
                raws, ourses = [], []
                for _ in range(self.scale.repeat):
                    raws.append(self.raw(size, steady=steady))
                    ourses.append(self.ours("uvicorn", size, steady=steady))
                raw_fps = sum(r["frames_per_sec"] for r in raws) / len(raws)
                ours_fps = sum(r["frames_per_sec"] for r in ourses) / len(ourses)
                if not steady:
                    self.raw_fanout[size] = raw_fps
                how = "one event at a time" if steady else "bursts"
                raw_cpu = max(r.get("cpu_percent", 0) for r in raws)
                cpu = max(r.get("cpu_percent", 0) for r in ourses)
                raw_server = max(max(r.get("server_cpu_percent", [0])) for r in raws)
                server = max(max(r.get("server_cpu_percent", [0])) for r in ourses)
                lost = sum(self.losses(r)[0] for r in raws)
                dup = sum(self.losses(r)[1] for r in raws)
                self.add(
                    Row(
                        "fanout",
                        f"raw ASGI (uvicorn websockets-sansio), {size:,} subs, {how}",
                        fmt(raw_fps, "frames/s"),
                        f"1.00x; CPU: server {raw_server}%, load generator {raw_cpu:.0f}%",
                        lost,
                        dup,
                        data={"runs": raws},
                    )
                )
                ratio = ours_fps / raw_fps if raw_fps else 0.0
                lost = sum(self.losses(r)[0] for r in ourses)
                dup = sum(self.losses(r)[1] for r in ourses)
                self.add(
                    Row(
                        "fanout",
                        f"notifier (uvicorn, 1 process), {size:,} subs, {how}",
                        fmt(ours_fps, "frames/s"),
                        f"{ratio:.2f}x raw (target >= {TARGETS['fanout_ratio']}x); "
                        f"CPU: server {server}%, load generator {cpu:.0f}%",
                        lost,
                        dup,
                        target_met=ratio >= TARGETS["fanout_ratio"] and lost == 0 and dup == 0,
                        data={"runs": ourses, "ratio": ratio},
                    )
                )

    def scaling(self) -> None:
        """Frames/s against the number of subscribers, with 1 and 2 server processes."""
        for size in self.scale.scaling_sizes:
            if size not in self.raw_fanout:
                self.raw_fanout[size] = self.raw(size)["frames_per_sec"]
            for processes in (1, 2):
                result = self.ours("uvicorn", size, processes)
                lost, dup = self.losses(result)
                raw = self.raw_fanout.get(size)
                compare = f"{result['frames_per_sec'] / raw:.2f}x raw (1 process)" if raw else ""
                servers_cpu = "+".join(f"{c}%" for c in result.get("server_cpu_percent", []))
                compare += f"; CPU: servers {servers_cpu}, load generator {result.get('cpu_percent', 0):.0f}%"
                self.add(
                    Row(
                        "scaling",
                        f"notifier, {processes} process{'es' if processes > 1 else ''}, {size:,} subs",
                        fmt(result["frames_per_sec"], "frames/s"),
                        compare,
                        lost,
                        dup,
                        data=result,
                    )
                )

    def latency(self) -> None:
        """10 events/s to N subscribers: publish (POST sent) -> receive, every frame."""
        size, secs, rate = self.scale.latency_subscribers, self.scale.latency_secs, 10
        raw_p99 = 0.0
        for label, kind in (("raw ASGI", "raw"), ("notifier (uvicorn)", "uvicorn")):
            with self.servers(kind) as (server,):
                channel = self.channel("latency")
                publish = self.raw_publisher() if kind == "raw" else self.notify_publisher(channel)
                result = self.loadgen(
                    {
                        "mode": "fanout",
                        "ws": [server.ws],
                        "subscribers": size,
                        "protocol": "raw" if kind == "raw" else "notifier",
                        "channel": channel,
                        "publish": publish,
                        "events": max(5, int(secs * rate)),
                        "warmup": 5,
                        "rate": rate,
                        "max_secs": secs + 60,
                    }
                )
            lat, fan = result["latency"], result["latency_from_publish"]
            lost, dup = self.losses(result)
            ours = kind != "raw"
            raw_p99 = raw_p99 if ours else lat["p99_ms"]
            ratio = lat["p99_ms"] / max(raw_p99, 1e-9)
            via = "POST /api/notify" if ours else "Redis PUBLISH"
            self.add(
                Row(
                    "latency",
                    f"{label}, {size:,} subs, {rate} events/s, {via} sent -> received",
                    f"p50 {lat['p50_ms']} / p99 {lat['p99_ms']} / max {lat['max_ms']:.1f} ms",
                    f"from the event's ts: p50 {fan['p50_ms']} / p99 {fan['p99_ms']} ms"
                    + (
                        f"; target p99 <= {TARGETS['latency_p99_ms']:.0f} ms; p99 {ratio:.2f}x raw"
                        f" (target <= {TARGETS['latency_p99_vs_raw']}x)"
                        if ours
                        else ""
                    ),
                    lost,
                    dup,
                    target_met=(
                        lat["p99_ms"] <= TARGETS["latency_p99_ms"]
                        and ratio <= TARGETS["latency_p99_vs_raw"]
                        and lost == 0
                        and dup == 0
                    )
                    if ours
                    else None,
                    data=result,
                )
            )

    def memory(self) -> None:
        """RSS per idle, subscribed connection: (RSS with N sockets - RSS after a warm-up) / N."""
        n = self.scale.memory_connections
        for label, kind in (("raw ASGI", "raw"), ("notifier (uvicorn)", "uvicorn")):
            with self.servers(kind) as (server,):
                protocol = "raw" if kind == "raw" else "notifier"
                channel = self.channel("idle")
                warm = {"mode": "hold", "ws": [server.ws], "protocol": protocol, "channel": channel}
                if not self.smoke:
                    self.loadgen({**warm, "subscribers": 50})
                    time.sleep(1.0)
                before = server.rss_kib()
                gen = LoadGen({**warm, "subscribers": n, "max_secs": 120}, self.workdir)
                try:
                    ready = gen.ready()
                    time.sleep(2.0)
                    after = server.rss_kib()
                    result = gen.result()
                finally:
                    gen.kill()
            per_conn = (after - before) / n * 1024 / 1000  # KB (10^3 bytes) per connection
            ours = kind != "raw"
            lost = int(ready.get("connect_errors", 0)) + (n - int(result.get("still_open", n)))
            self.add(
                Row(
                    "memory",
                    f"{label}, {n:,} idle subscribed connections",
                    fmt(per_conn, "KB/conn"),
                    f"RSS {before // 1024} -> {after // 1024} MiB"
                    + (f"; target <= {TARGETS['memory_kib_per_conn']:.0f} KB" if ours else ""),
                    lost,
                    0,
                    target_met=(per_conn <= TARGETS["memory_kib_per_conn"] and lost == 0) if ours else None,
                    data={"rss_before_kib": before, "rss_after_kib": after, "connections": n, **result},
                )
            )

    def inbox(self) -> None:
        """Stored notifications on PostgreSQL (bench/inbox.py)."""
        from bench import inbox

        inbox.run(self, Row, fmt)

    def push(self) -> None:
        """Web Push from one Celery worker against the stand-in push service (bench/push.py)."""
        from bench import push

        push.run(self, Row, fmt)

    def scheduling(self) -> None:
        """Scheduled events: dispatch lag at a steady rate, and a backlog's drain (bench/scheduling.py)."""
        from bench import scheduling

        scheduling.run(self, Row, fmt)

    def personal(self) -> None:
        """The notification shape: one socket per user on their personal channel, each event to
        one random user, at a fixed rate and as fast as acknowledged; beside the plain app and a
        Node `ws` server routing the same way (targets are against the plain app)."""
        users, rate, secs = (50, 50, 2.0) if self.smoke else (5000, 500, 20.0)
        secret = PERSONAL_JWT_SECRET
        results: dict[tuple[str, str], dict[str, Any]] = {}
        kinds: tuple[tuple[str, str, dict[str, str]], ...] = (
            ("raw", "raw", {}),
            ("node", "node-personal", {}),
            ("notifier", "uvicorn", {"NOTIFIER_JWT_SECRET": secret}),
        )
        idle: dict[str, tuple[int, int]] = {}  # kind -> RSS (KiB) before and after connecting
        for kind, server_kind, env in kinds:
            with self.servers(server_kind, 1, **env) as (server,):
                base = {"mode": "personal", "kind": kind, "users": users, "ws": server.ws, "seconds": secs}
                base |= {"post": f"{server.http}/api/notify", "key": self.key, "secret": secret}
                self.loadgen({**base, "users": 50, "rate": 50, "seconds": 1.0})  # warm-up: code paths, pools
                time.sleep(1.0)
                before = server.rss_kib()

                def read_idle_rss(server: Server = server, kind: str = kind, before: int = before) -> None:
                    time.sleep(PERSONAL_PAUSE_SECS - 0.5)  # idle, every socket subscribed
                    idle[kind] = (before, server.rss_kib())

                results[kind, "rate"] = self.loadgen(
                    {**base, "rate": rate, "pause_secs": PERSONAL_PAUSE_SECS}, watch=[server], at_ready=read_idle_rss
                )
                results[kind, "closed"] = self.loadgen({**base, "window": 32}, watch=[server])
                results[kind, "storm"] = self.loadgen({**base, "rate": rate, "storm": True}, watch=[server])
        labels = {"raw": "raw ASGI", "node": "Node ws", "notifier": "notifier (uvicorn)"}
        raw_connect = users / max(results["raw", "rate"]["connect_seconds"], 1e-9)
        hows = {
            "raw": "?user=, no token",
            "node": "?user=, no token",
            "notifier": "a connection token, then a subscribe",
        }
        for kind, how in hows.items():
            connected = results[kind, "rate"]
            per_sec = users / max(connected["connect_seconds"], 1e-9)
            errors = connected["connect_errors"]
            ours = kind == "notifier"
            self.add(
                Row(
                    "personal",
                    f"{labels[kind]}, connect {users:,} sockets ({how}), 200 at a time",
                    fmt(per_sec, "sockets/s"),
                    (f"{per_sec / raw_connect:.2f}x raw (target >= 0.8x); " if ours else "") + f"{errors} failed",
                    None,
                    None,
                    target_met=(per_sec >= 0.8 * raw_connect and not errors) if ours else None,
                    data={"connect_seconds": connected["connect_seconds"], "connect_errors": errors},
                )
            )
        for kind in hows:
            before, after = idle[kind]
            per_socket = (after - before) / users * 1024 / 1000  # KB (10^3 bytes)
            ours = kind == "notifier"
            self.add(
                Row(
                    "personal",
                    f"{labels[kind]}, {users:,} idle sockets, one personal channel each",
                    fmt(per_socket, "KB/socket"),
                    f"RSS {before // 1024} -> {after // 1024} MiB"
                    + (f"; target <= {TARGETS['personal_kb_per_socket']:.0f} KB" if ours else ""),
                    None,
                    None,
                    target_met=per_socket <= TARGETS["personal_kb_per_socket"] if ours else None,
                    data={"rss_before_kib": before, "rss_after_kib": after, "sockets": users},
                )
            )
        raw_lat, raw_rate = results["raw", "rate"]["latency"], results["raw", "closed"]["events_per_sec"]
        for kind in hows:
            fixed, closed = results[kind, "rate"], results[kind, "closed"]
            lat = fixed["latency"]
            ours = kind == "notifier"
            compare = f"max {round(lat['max_ms'] or 0, 1)} ms; server CPU {fixed.get('server_cpu_percent')}%"
            if kind != "raw":
                compare += f"; p99 {lat['p99_ms'] / max(raw_lat['p99_ms'] or 1e-9, 1e-9):.1f}x raw"
                compare += " (target <= 2x)" if ours else ""
            self.add(
                Row(
                    "personal",
                    f"{labels[kind]}, {users:,} users one socket each, {rate} events/s to random users",
                    f"p50 {lat['p50_ms']} / p99 {lat['p99_ms']} ms",
                    compare,
                    fixed["lost"],
                    fixed["duplicated"] + fixed["misrouted"],
                    target_met=(lat["p99_ms"] or 0) <= 2 * (raw_lat["p99_ms"] or 0) if ours else None,
                    data=fixed,
                )
            )
            ratio = f"{closed['events_per_sec'] / max(raw_rate, 1e-9):.2f}x raw" if kind != "raw" else ""
            self.add(
                Row(
                    "personal",
                    f"{labels[kind]}, {users:,} users, as fast as acknowledged (32 in flight)",
                    fmt(closed["events_per_sec"], "events/s"),
                    (f"{ratio} (target >= 0.8x); " if ours else f"{ratio}; " if ratio else "")
                    + f"p99 {closed['latency']['p99_ms']} ms; server CPU {closed.get('server_cpu_percent')}%",
                    closed["lost"],
                    closed["duplicated"] + closed["misrouted"],
                    target_met=closed["events_per_sec"] >= 0.8 * raw_rate if ours else None,
                    data=closed,
                )
            )

        node_storm = results["node", "storm"]["storm"]["resubscribe_seconds"] or 1e-9
        for kind in hows:
            result = results[kind, "storm"]
            storm, ours = result["storm"], kind == "notifier"
            took, before, during = (
                storm["resubscribe_seconds"] or 0,
                storm["events_per_sec_before"],
                storm["events_per_sec_during"],
            )
            compare = f"publishing {fmt(during, 'events/s')} meanwhile ({during / max(before, 1e-9):.2f}x before)"
            compare += f"; {storm['connect_errors']} failed"
            if ours:
                compare += f"; {took / node_storm:.1f}x Node's time (target <= 2x, publishing >= 0.5x, 0 lost)"
            else:  # no history to come back to: what was sent meanwhile is gone, as the issue's table shows
                compare += f"; {result['lost']} lost, {result['duplicated']} duplicated (no history to resume from)"
            self.add(
                Row(
                    "personal",
                    f"{labels[kind]}, all {users:,} sockets drop and come back"
                    f"{' with since' if ours else ''} while {rate} events/s flow",
                    f"{took:.1f} s to resubscribed",
                    compare,
                    result["lost"] if ours else None,
                    result["duplicated"] + result["misrouted"] if ours else None,
                    target_met=(
                        took <= 2 * node_storm
                        and during >= 0.5 * before
                        and not result["lost"]
                        and not result["duplicated"]
                        and not storm["connect_errors"]
                    )
                    if ours
                    else None,
                    data=result,
                )
            )

    def cluster(self) -> None:
        """One Redis against a three-master Redis Cluster on this box, the same load in one run:
        the personal shape (one socket per user, each event to a random user) on 4 server
        processes each, and on 1 process with one Redis as the baseline. Besides events/s and
        latency, each Redis master's CPU per event and its memory per stored event, read from
        INFO while the load runs: the per-master figures of docs/capacity.md."""
        from tests.rediscluster import PASSWORD, TestCluster

        users, rate, secs = (60, 30, 2.0) if self.smoke else (8000, 1000, 20.0)
        secret = PERSONAL_JWT_SECRET
        cluster = TestCluster(self.workdir / "cluster")
        try:
            single = {**self.env, "NOTIFIER_JWT_SECRET": secret}
            clustered = single | {
                "REDIS_URL": f"redis://:{PASSWORD}@cluster/0",
                "NOTIFIER_REDIS_CLUSTER": cluster.seeds,
                "CELERY_BROKER_URL": "memory://",  # no Celery in this scenario; the mode requires one
            }
            one_redis = [RedisStats(self.redis.port)]
            masters = [RedisStats(port, PASSWORD) for port in cluster.masters()]
            setups = [
                ("one Redis, 1 process", single, 1, one_redis),
                ("one Redis, 4 processes", single, 4, one_redis),
                ("3-master cluster, 4 processes", clustered, 4, masters),
            ]
            baseline = 0.0
            for label, env, processes, redises in setups:
                with self.servers("uvicorn", processes, **env) as servers:
                    base = {"mode": "personal", "kind": "notifier", "users": users, "seconds": secs}
                    base |= {"ws": [s.ws for s in servers], "post": [f"{s.http}/api/notify" for s in servers]}
                    base |= {"key": self.key, "secret": secret}
                    self.loadgen({**base, "users": 50, "rate": 50, "seconds": 1.0})  # warm-up: code paths, pools
                    fixed = self.loadgen({**base, "rate": rate}, watch=servers)
                    ready: list[list[float]] = []

                    def sample_at_ready(redises: list[RedisStats] = redises, ready: list[Any] = ready) -> None:
                        ready.append([r.cpu_seconds() for r in redises])

                    closed = self.loadgen({**base, "window": 32 * processes}, watch=servers, at_ready=sample_at_ready)
                    after = [r.cpu_seconds() for r in redises]
                    per_channel, _ = per_channel_and_per_event([s for r in redises for s in r.history_bytes()])
                    # One channel with a long history: what each stored event adds.
                    long_channel = f"bench.history.{processes}.{len(redises)}"
                    for start in range(0, 1000, 100):
                        batch = [
                            {"channel": long_channel, "event": "bench", "data": {"s": n}}
                            for n in range(start, start + 100)
                        ]
                        status, answer = post_json(f"{servers[0].http}/api/notify/batch", {"events": batch}, self.key)
                        if status != 202:
                            raise BenchError(f"batch publish answered {status}: {answer}")
                    tag = f"{{ch.{long_channel}}}" if len(redises) > 1 else long_channel
                    long_bytes, long_events = history_of(redises, tag)
                    per_event = (long_bytes - per_channel) / max(1, long_events)
                events = closed["events_per_sec"] * secs
                baseline = baseline or closed["events_per_sec"]
                used = [a - b for a, b in zip(after, ready[0], strict=True)]
                cpu_us = round(1e6 * sum(used) / max(events, 1))  # every master's CPU, per event of the load
                cores = [round(100 * cpu / secs) for cpu in used]  # each master's share of a core
                lat = fixed["latency"]
                self.add(
                    Row(
                        "cluster",
                        f"{label}, {users:,} users one socket each, {rate} events/s to random users",
                        f"p50 {lat['p50_ms']} / p99 {lat['p99_ms']} ms",
                        f"server CPU {fixed.get('server_cpu_percent')}%",
                        fixed["lost"],
                        fixed["duplicated"] + fixed["misrouted"],
                        data=fixed,
                    )
                )
                self.add(
                    Row(
                        "cluster",
                        f"{label}, as fast as acknowledged ({32 * processes} in flight)",
                        fmt(closed["events_per_sec"], "events/s"),
                        f"{closed['events_per_sec'] / baseline:.2f}x one Redis, 1 process; server CPU"
                        f" {closed.get('server_cpu_percent')}%; Redis CPU {cpu_us} us per event (masters at"
                        f" {'/'.join(map(str, cores))}% of a core); history {per_event:.0f} bytes per event"
                        f" + {per_channel:.0f} per channel",
                        closed["lost"],
                        closed["duplicated"] + closed["misrouted"],
                        data=closed
                        | {"redis_cpu_us_per_event": cpu_us, "redis_core_percent": cores}
                        | {"history_bytes_per_event": per_event, "history_bytes_per_channel": per_channel},
                    )
                )
        finally:
            cluster.stop()

    def soak(self) -> None:
        """Personal channels for --soak-minutes (15) with churn: sockets drop and come back
        (notifier's with `since`) while events go to random users; notifier, the plain app and
        the Node server side by side, each with its own load generator. Each server's RSS, and
        Redis's used memory, are sampled throughout; their slopes over the last third tell of a
        leak. Before that, every channel's (short) history fills, and the cyclic garbage that
        reconnects leave waits for a full collection, which NOTIFIER_GC_THRESHOLDS makes rare:
        memory rises to a plateau there without leaking. 0 lost in notifier's row, as everywhere."""
        users, rate, churn = (50, 20, 5) if self.smoke else (5000, 200, 50)
        secs, every = (6.0, 0.5) if self.smoke else (self.soak_minutes * 60, 10.0)
        secret = PERSONAL_JWT_SECRET
        # History of 10 per channel fills within 5,000 x 10 / 200 = 250 s; after that Redis holds still.
        env = {
            "NOTIFIER_JWT_SECRET": secret,
            "NOTIFIER_HISTORY_SIZE": "10",
            "COMPARATOR_MAX_SECS": str(int(secs) + 900),
        }
        kinds = {"raw": ("raw", "raw ASGI"), "node": ("node-personal", "Node ws"), "notifier": ("uvicorn", "notifier")}
        samples: dict[str, list[tuple[float, int, int]]] = {kind: [] for kind in kinds}  # (s, RSS KiB, Redis KiB)
        results: dict[str, dict[str, Any]] = {}
        with ExitStack() as stack:
            servers = {
                kind: stack.enter_context(self.servers(server_kind, 1, **env))[0]
                for kind, (server_kind, _) in kinds.items()
            }
            gens: dict[str, LoadGen] = {}
            for kind, server in servers.items():
                config = {"mode": "personal", "kind": kind, "users": users, "ws": server.ws, "seconds": secs}
                config |= {"rate": rate, "churn": churn, "post": f"{server.http}/api/notify", "key": self.key}
                config |= {"secret": secret, "hard_deadline_secs": secs + 600}
                gens[kind] = LoadGen(config, self.workdir)
                stack.callback(gens[kind].kill)
            for gen in gens.values():
                gen.ready()
            started = time.monotonic()
            while True:
                elapsed = time.monotonic() - started
                redis_kib = self.redis.used_memory_kib()
                for kind, server in servers.items():
                    samples[kind].append((elapsed, server.rss_kib(), redis_kib))
                if elapsed >= secs:
                    break
                time.sleep(min(every, max(0.0, secs - elapsed)))
            for kind, gen in gens.items():
                results[kind] = gen.result(timeout=300)
        length = f"{secs / 60:.0f} min" if secs >= 60 else f"{secs:.0f} s"
        for kind, (_, label) in kinds.items():
            series, result, ours = samples[kind], results[kind], kind == "notifier"
            late = [s for s in series if s[0] >= 2 * secs / 3] or series
            rss_slope = slope_per_minute([(s[0], s[1]) for s in late])
            redis_slope = slope_per_minute([(s[0], s[2]) for s in late])
            lost, dup = self.losses(result)
            churned = result["churn"]
            compare = (
                f"RSS {series[0][1] // 1024} -> {series[-1][1] // 1024} MiB (peak {max(s[1] for s in series) // 1024})"
            )
            if ours:
                compare += (
                    f"; Redis {series[0][2] // 1024} -> {series[-1][2] // 1024} MiB ({redis_slope:+,.0f} KiB/min);"
                    " slopes over the last third"
                )
            else:  # no history to come back to: what was sent meanwhile is gone
                compare += f"; slope over the last third; {result['lost']:,} events lost while sockets were away"
            compare += (
                f"; {churned['reconnected']:,} reconnects, {churned['connect_errors']} failed;"
                f" p99 {result['latency']['p99_ms']} ms"
            )
            self.add(
                Row(
                    "soak",
                    f"{label}, {users:,} personal sockets, {rate} events/s to random users, {churn} reconnects/s"
                    f"{' with since' if ours else ''}, {length} (the three side by side)",
                    f"RSS {rss_slope:+,.0f} KiB/min",
                    compare,
                    lost + churned["connect_errors"] if ours else None,  # the others have no history
                    dup + result["misrouted"],  # nothing resumes there, so nothing may come twice
                    data={
                        **result,
                        "samples": series,
                        "rss_kib_per_min": rss_slope,
                        **({"redis_kib_per_min": redis_slope} if ours else {}),
                    },
                )
            )

    def tokens(self) -> None:
        """POST /api/tokens (connection tokens) against one process, beside a plain app minting the same JWT."""
        secs = self.scale.publish_secs
        key = manage(self.env, "create_api_key", "bench-tokens", "--scope", "tokens").strip().splitlines()[-1]
        load = {"mode": "http", "kind": "tokens", "concurrency": 16, "seconds": secs}
        with self.servers("raw") as (raw,):
            plain = self.loadgen({**load, "url": f"{raw.http}/api/tokens"})
        with self.servers("node-personal") as (node,):
            node_result = self.loadgen({**load, "url": f"{node.http}/api/tokens"})
        with self.servers("uvicorn") as (server,):
            ours = self.loadgen({**load, "url": f"{server.http}/api/tokens", "key": key}, watch=[server])
        rate, raw_rate = ours["requests_per_sec"], plain["requests_per_sec"]
        self.add(
            Row(
                "tokens",
                "raw ASGI POST /api/tokens (parse JSON, sign an HS256 JWT; no key check), 16 in flight",
                fmt(raw_rate, "tokens/s"),
                f"p99 {plain['latency']['p99_ms']} ms",
                lost=None,
                duplicated=None,
                data=plain,
            )
        )
        self.add(
            Row(
                "tokens",
                "Node POST /api/tokens (parse JSON, sign an HS256 JWT; no key check), 16 in flight",
                fmt(node_result["requests_per_sec"], "tokens/s"),
                f"{node_result['requests_per_sec'] / max(raw_rate, 1e-9):.2f}x raw;"
                f" p99 {node_result['latency']['p99_ms']} ms",
                lost=None,
                duplicated=None,
                data=node_result,
            )
        )
        self.add(
            Row(
                "tokens",
                "notifier POST /api/tokens (API key, scope and channel checks), 16 in flight",
                fmt(rate, "tokens/s"),
                f"{rate / max(raw_rate, 1e-9):.2f}x raw; p99 {ours['latency']['p99_ms']} ms; errors {ours['errors']};"
                f" target >= {TARGETS['tokens_per_sec']:,.0f}/s",
                lost=None,
                duplicated=None,
                target_met=rate >= TARGETS["tokens_per_sec"] and ours["errors"] == 0,
                data=ours,
            )
        )

    def publish(self) -> None:
        """POST /api/notify and /api/notify/batch against one process, with 2 subscribers checking."""
        secs = self.scale.publish_secs
        with self.servers("raw") as (raw,):
            result = self.loadgen(
                {"mode": "http", "url": f"{raw.http}/api/notify", "kind": "raw", "concurrency": 16, "seconds": secs}
            )
        raw_rps = result["requests_per_sec"]
        self.add(
            Row(
                "publish",
                "raw ASGI POST (parse JSON, Redis PUBLISH), 16 in flight",
                fmt(raw_rps, "req/s"),
                f"p99 {result['latency']['p99_ms']} ms",
                data=result,
            )
        )
        acks = {"NOTIFIER_REPLICA_ACKS": "1"}
        runs = [
            ("POST /api/notify, 16 in flight", {"concurrency": 16}, "notify", {}),
            ("POST /api/notify/batch (100 events), 4 in flight", {"concurrency": 4, "batch": 100}, "batch", {}),
            (
                "POST /api/notify, NOTIFIER_REPLICA_ACKS=1 (a local replica), 16 in flight",
                {"concurrency": 16},
                "acks",
                acks,
            ),
            (
                "POST /api/notify/batch (100 events), NOTIFIER_REPLICA_ACKS=1, 4 in flight",
                {"concurrency": 4, "batch": 100},
                "acks-batch",
                acks,
            ),
        ]
        plain: dict[str, float] = {}
        replica: Redis | None = None
        try:
            for label, extra, which, env in runs:
                if env and replica is None:
                    replica = Redis(self.workdir, replica_of=self.redis.port)
                with self.servers("uvicorn", 1, **env) as (server,):
                    channel = self.channel("publish")
                    path = "/api/notify/batch" if which.endswith("batch") else "/api/notify"
                    result = self.loadgen(
                        {
                            "mode": "http",
                            "url": f"{server.http}{path}",
                            "key": self.key,
                            "kind": "notify",
                            "channel": channel,
                            "seconds": secs,
                            "subscribers": 2,
                            "ws": [server.ws],
                            **extra,
                        }
                    )
                lost, dup = self.losses(result)
                dup += int(result.get("unacknowledged_received", 0))
                lost += int(result.get("errors", 0))
                if which.startswith("acks"):  # the option's cost: no target, a ratio to the same run without it
                    batch = which == "acks-batch"
                    value = result["events_per_sec"] if batch else result["requests_per_sec"]
                    base = plain["batch" if batch else "notify"]
                    self.add(
                        Row(
                            "publish",
                            f"notifier {label}",
                            fmt(value, "events/s" if batch else "req/s"),
                            f"{value / base:.2f}x without acks; p99 {result['latency']['p99_ms']} ms",
                            lost,
                            dup,
                            data=result,
                        )
                    )
                    continue
                plain[which] = result["events_per_sec"] if which == "batch" else result["requests_per_sec"]
                if which == "notify":
                    value, target = result["requests_per_sec"], TARGETS["notify_rps"]
                    text = fmt(value, "req/s")
                    compare = (
                        f"{value / raw_rps:.2f}x raw (target >= {TARGETS['notify_vs_raw']}x); p99"
                        f" {result['latency']['p99_ms']} ms; target >= {target:,.0f}"
                    )
                else:
                    value, target = result["events_per_sec"], TARGETS["batch_eps"]
                    text = fmt(value, "events/s")
                    compare = (
                        f"{result['requests_per_sec']:,.0f} req/s; p99 {result['latency']['p99_ms']} ms; "
                        f"target >= {target:,.0f}"
                    )
                self.add(
                    Row(
                        "publish",
                        f"notifier {label}",
                        text,
                        compare,
                        lost,
                        dup,
                        target_met=value >= target
                        and (which != "notify" or value >= TARGETS["notify_vs_raw"] * raw_rps)
                        and lost == 0
                        and dup == 0,
                        data=result,
                    )
                )
        finally:
            if replica is not None:
                replica.stop()

    def celery(self) -> None:
        """Tasks queued first, then one worker (default concurrency) publishes them; once with
        Celery's defaults, once with kombu's ack emulation off (docs/benchmarks.md says why)."""
        from celery import Celery

        n = self.scale.celery_tasks
        noop = self.celery_noop_rate(n)
        self.add(
            Row(
                "celery",
                f"1 worker (prefork, {os.cpu_count()} children), {n:,} queued no-op tasks",
                fmt(noop, "tasks/s"),
                "the same worker's ceiling: the transport and the pool, no notifier code",
                None,
                None,
            )
        )
        variants = [
            ("", {}),
            (", ack_emulation off", {"CELERY_BROKER_TRANSPORT_OPTIONS": '{"ack_emulation": false}'}),
        ]
        for label, extra_env in variants:
            with self.servers("uvicorn") as (server,):
                channel = self.channel("celery")
                gen = LoadGen(
                    {
                        "mode": "count",
                        "ws": [server.ws],
                        "subscribers": 1,
                        "channel": channel,
                        "expect": n,
                        "max_secs": 180,
                    },
                    self.workdir,
                )
                worker: Worker | None = None
                try:
                    gen.ready()
                    app = Celery(broker=self.redis.url)
                    with app.connection_for_write() as conn:
                        for seq in range(1, n + 1):
                            app.send_task(
                                "notifier.notify",
                                kwargs={"channel": channel, "event": "bench", "data": {"s": seq}},
                                connection=conn,
                            )
                    worker = Worker({**self.env, **extra_env}, self.workdir)
                    result = gen.result(timeout=240)
                finally:
                    gen.kill()
                    if worker is not None:
                        worker.stop()
            lost, dup = self.losses(result)
            value = result["events_per_sec"]
            default = not extra_env
            self.add(
                Row(
                    "celery",
                    f"1 worker (prefork, {os.cpu_count()} children{label}), {n:,} queued tasks",
                    fmt(value, "events/s"),
                    f"{value / max(noop, 1e-9):.2f}x the no-op task (target >= {TARGETS['celery_vs_noop']}x)"
                    + (f"; target >= {TARGETS['celery_eps']:,.0f}" if default else "; not the default (see docs)"),
                    lost,
                    dup,
                    target_met=(
                        value >= TARGETS["celery_eps"]
                        and value >= TARGETS["celery_vs_noop"] * noop
                        and lost == 0
                        and dup == 0
                    )
                    if default
                    else None,
                    data=result,
                )
            )

    def celery_noop_rate(self, n: int) -> float:
        """Tasks/s of one worker draining `n` queued no-op tasks (bench/noop_task.py),
        from the first task taken to the queue empty and every task acknowledged."""
        import redis
        from celery import Celery

        app = Celery(broker=self.redis.url)
        with app.connection_for_write() as conn:
            for _ in range(n):
                app.send_task("bench.noop", connection=conn)
        client = redis.Redis.from_url(self.redis.url)
        worker = Worker(self.env, self.workdir, include="bench.noop_task")
        try:
            first = last = 0.0
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                queued, unacked = client.llen("celery"), client.hlen("unacked")
                if not first and queued < n:
                    first = time.monotonic()
                if first and queued == 0 and unacked == 0:
                    last = time.monotonic()
                    break
                time.sleep(0.002)
            if not last:
                raise BenchError(f"bench.noop: {client.llen('celery')} tasks still queued after 240 s")
        finally:
            worker.stop()
            client.close()
        return (n - 1) / max(last - first, 1e-9)

    def recovery(self) -> None:
        """N sockets resubscribe with `since` at once and replay the channel's history."""
        events, subscribers = self.scale.recovery_events, self.scale.recovery_subscribers
        with self.servers("uvicorn") as (server,):
            channel = self.channel("recovery")
            epoch = ""
            for start in range(1, events + 1, 100):
                batch = [
                    {"channel": channel, "event": "bench", "data": {"s": s}}
                    for s in range(start, min(events, start + 99) + 1)
                ]
                status, answer = post_json(f"{server.http}/api/notify/batch", {"events": batch}, self.key)
                if status != 202:
                    raise BenchError(f"batch publish failed: {status} {answer}")
                epoch = answer["results"][-1]["channels"][channel]["epoch"]
            result = self.loadgen(
                {
                    "mode": "recover",
                    "ws": [server.ws],
                    "subscribers": subscribers,
                    "channel": channel,
                    "expect": events,
                    "since": {"offset": 0, "epoch": epoch},
                }
            )
        lost, dup = self.losses(result)
        self.add(
            Row(
                "recovery",
                f"{subscribers:,} sockets resubscribe, {events:,} events each",
                fmt(result["replayed_per_sec"], "events/s"),
                f"{result['seconds']:.2f} s for {result['replayed']:,} replayed",
                lost,
                dup,
                data=result,
            )
        )

    def servers_compare(self) -> None:
        """Our app under each server and WebSocket backend, compression off and on."""
        size = self.scale.servers_subscribers
        variants = [
            ("uvicorn", "uvicorn --ws websockets-sansio (production)", False),
            ("uvicorn-deflate", "uvicorn websockets-sansio, permessage-deflate on", True),
            ("uvicorn-websockets", "uvicorn --ws websockets (legacy)", False),
            ("uvicorn-wsproto", "uvicorn --ws wsproto", False),
            ("daphne", "daphne", False),
        ]
        if self.smoke:  # the backends that differ most; the smoke run is about correctness
            variants = [v for v in variants if v[0] in ("uvicorn", "uvicorn-deflate", "daphne")]
        base = None
        for kind, label, deflate in variants:
            why_not = server_available(kind)
            if why_not:
                self.add(Row("servers", f"{label}, {size:,} subs", "not run", why_not, None, None))
                continue
            result = self.ours(kind, size, deflate=deflate)
            base = base or result["frames_per_sec"]
            lost, dup = self.losses(result)
            self.add(
                Row(
                    "servers",
                    f"{label}, {size:,} subs",
                    fmt(result["frames_per_sec"], "frames/s"),
                    f"{result['frames_per_sec'] / base:.2f}x production",
                    lost,
                    dup,
                    data=result,
                )
            )

    def layers(self) -> None:
        """bench/layers.py against this run's Redis: the channel layers for the hub's traffic."""
        if self.smoke:
            return
        out = subprocess.run(  # noqa: S603
            [sys.executable, str(Path(__file__).with_name("layers.py")), self.redis.url],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
        for line in out.splitlines():
            row = json.loads(line)
            self.add(
                Row(
                    "layers",
                    f"{row['layer']}, 2 receivers (not our service)",
                    fmt(row["publish/s"], "publish/s"),
                    f"delivered {row['delivered']}, lost {row['lost']}; p50 {row['p50 ms']} / p99 {row['p99 ms']} ms",
                    None,
                    None,
                    data=row,
                )
            )


def table(rows: list[Row]) -> str:
    head = ["scenario", "setup", "result", "compared with", "lost", "dup", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        target = "" if r.target_met is None else ("met" if r.target_met else "MISSED")
        lost = "" if r.lost is None else str(r.lost)
        dup = "" if r.duplicated is None else str(r.duplicated)
        lines.append(f"| {r.scenario} | {r.setup} | {r.result} | {r.compare} | {lost} | {dup} | {target} |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every scenario at a tiny scale (the test suite's run)")
    parser.add_argument("--only", default=os.environ.get("BENCH", ""), help=f"comma-separated: {','.join(SCENARIOS)}")
    parser.add_argument(
        "--subscribers", default=os.environ.get("SUBSCRIBERS", ""), help="fan-out sizes, e.g. 1000 or 1000,10000"
    )
    parser.add_argument(
        "--repeat", type=int, default=int(os.environ.get("REPEAT") or 1), help="interleaved fan-out runs"
    )
    parser.add_argument(
        "--soak-minutes", type=float, default=float(os.environ.get("SOAK_MINUTES") or 15), help="the soak's length"
    )
    parser.add_argument("--json", default=os.environ.get("BENCH_JSON", ""), help="also write the rows as JSON here")
    parser.add_argument(
        "--profile", default=os.environ.get("BENCH_PROFILE", ""), help="py-spy each loaded server; stacks go here"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    scale = Scale.smoke() if args.smoke else Scale.full()
    scale.repeat = max(1, args.repeat)
    if args.subscribers:
        sizes = [int(s) for s in args.subscribers.replace(" ", "").split(",") if s]
        scale.fanout_sizes = scale.scaling_sizes = sizes
        scale.latency_subscribers = scale.servers_subscribers = sizes[0]
        scale.memory_connections = max(sizes)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or SCENARIOS
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    largest = max(scale.fanout_sizes + scale.scaling_sizes + [scale.memory_connections])
    limit = raise_fd_limit(largest + 1000)
    if limit < largest + 200:
        print(f"open-file limit {limit} is too low for {largest:,} sockets; raise `ulimit -Hn`", file=sys.stderr)
        return 2
    ensure_loadgen()
    workdir = Path(tempfile.mkdtemp(prefix="notifier-bench-"))
    print(f"notifier bench: {'smoke' if args.smoke else 'full'} run, scenarios {','.join(only)}; logs in {workdir}")
    started = time.monotonic()
    profile = Path(args.profile).resolve() if args.profile else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    bench = Bench(scale, workdir, args.smoke, profile, args.soak_minutes)
    failures: list[str] = []
    try:
        for name in SCENARIOS:
            if name not in only:
                continue
            print(f"[{name}]", flush=True)
            try:
                getattr(bench, "servers_compare" if name == "servers" else name)()
            except BenchError as exc:
                failures.append(f"{name}: {exc}")
                print(f"  ! {name} failed: {exc}", file=sys.stderr)
    finally:
        bench.close()
    elapsed = time.monotonic() - started
    print()
    print(table(bench.rows))
    print()
    print(f"{len(bench.rows)} rows in {elapsed:.0f} s; machine: {os.cpu_count()} cores; logs in {workdir}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": [asdict(r) for r in bench.rows], "failures": failures, "seconds": elapsed}, indent=1)
        )
    lossy = [r for r in bench.rows if (r.lost or 0) or (r.duplicated or 0)]
    if failures or lossy:
        for failure in failures:
            print(f"FAILED {failure}", file=sys.stderr)
        for row in lossy:
            print(
                f"LOST/DUPLICATED: {row.scenario} {row.setup}: {row.lost} lost, {row.duplicated} dup", file=sys.stderr
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
