"""The processes a benchmark run starts: its own Redis, ASGI servers, a Celery worker, the load
generator. Everything listens on 127.0.0.1, on free ports, and is stopped when the run ends."""

from __future__ import annotations

import json
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOADGEN = ROOT / "bench" / "loadgen"
START_TIMEOUT_SECS = 60


class BenchError(Exception):
    """A benchmark could not run (a process failed to start, the load generator failed)."""


def raise_fd_limit(needed: int) -> int:
    """Raise this process's (and so its children's) open-file limit as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_SECS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout}s waiting for {what}")


class Process:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own commands
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def rss_kib(self) -> int:
        """Resident memory of the process and its descendants (uvicorn runs in one process)."""
        total = 0
        for pid in [self.pid, *_descendants(self.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(c) for c in children]
    for child in list(out):
        out.extend(_descendants(child))
    return out


class RedisStats:
    """Reads one Redis server's CPU time and memory (INFO), for the cluster scenario."""

    def __init__(self, port: int, password: str = "") -> None:
        self.port, self.password = port, password

    def cpu_seconds(self) -> float:
        """CPU time used so far, user and system."""
        with redis.Redis(port=self.port, password=self.password or None, socket_timeout=5) as client:
            cpu = client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def history_bytes(self, sample: int = 300) -> list[tuple[int, int]]:
        """(bytes, events) of each of up to `sample` channels' history on this server: MEMORY
        USAGE of its log stream and meta hash, and the events the stream holds (XLEN)."""
        found: list[tuple[int, int]] = []
        with redis.Redis(port=self.port, password=self.password or None, socket_timeout=5) as client:
            for log in client.scan_iter(match="notifier:h:*:log", count=1000):
                if len(found) >= sample:
                    break
                meta = log[: -len(b":log")] + b":meta"
                size = int(client.memory_usage(log, samples=0) or 0) + int(client.memory_usage(meta) or 0)
                found.append((size, int(client.xlen(log))))
        return found


def history_of(redises: list[RedisStats], channel_tag: str) -> tuple[int, int]:
    """(bytes, events) of one channel's history, on whichever server holds it: its keys are
    `notifier:h:<tag>:log` and `:meta` (the tag: the channel on one Redis, `{<group>}` on a cluster)."""
    for stats in redises:
        with redis.Redis(port=stats.port, password=stats.password or None, socket_timeout=5) as client:
            log, meta = f"notifier:h:{channel_tag}:log", f"notifier:h:{channel_tag}:meta"
            try:
                here = client.exists(log)
            except redis.ResponseError:  # MOVED: another master holds its slot
                continue
            if here:
                size = int(client.memory_usage(log, samples=0) or 0) + int(client.memory_usage(meta) or 0)
                return size, int(client.xlen(log))
    return 0, 0


def per_channel_and_per_event(samples: list[tuple[int, int]]) -> tuple[float, float]:
    """Least squares of bytes = a + b * events over channels: (a, b), a channel's fixed cost
    and each stored event's."""
    n = len(samples)
    if n < 2:
        return 0.0, 0.0
    mean_x = sum(x for _, x in samples) / n
    mean_y = sum(y for y, _ in samples) / n
    var = sum((x - mean_x) ** 2 for _, x in samples)
    b = sum((x - mean_x) * (y - mean_y) for y, x in samples) / var if var else 0.0
    return mean_y - b * mean_x, b


class Redis(Process):
    def __init__(self, workdir: Path, replica_of: int | None = None) -> None:
        """A redis-server on a free port; with `replica_of`, a replica of the one on that port,
        returned once its link is up."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--maxmemory-policy", "noeviction", "--dir", str(workdir), "--maxclients", "10000"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of), "--dbfilename", f"replica-{self.port}.rdb"]
        name = "redis" if replica_of is None else f"redis-replica-{self.port}"
        super().__init__(name, argv, dict(os.environ), workdir / f"{name}.log")
        wait_until(self._up, "redis-server")
        if replica_of is not None:
            wait_until(lambda: b"master_link_status:up" in self._command(b"INFO replication"), "the replica's link")

    def _command(self, command: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(command + b"\r\n")
            return sock.recv(65536)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def used_memory_kib(self) -> int:
        """INFO memory's used_memory: what Redis's allocator holds for data and buffers."""
        info = self._command(b"INFO memory").decode(errors="replace")
        return int(info.split("used_memory:", 1)[1].split()[0]) // 1024

    def _up(self) -> bool:
        if not self.alive():
            raise BenchError(f"redis-server exited:\n{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def service_env(redis_url: str, db_path: Path, **extra: str) -> dict[str, str]:
    """Production mode: Redis for everything, a SQLite file for the API keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "NOTIFIER_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="notifier.settings",
        DJANGO_SECRET_KEY="bench-secret-key-not-for-production",  # noqa: S106 - a throwaway local run
        DATABASE_URL=f"sqlite:///{db_path}",
        REDIS_URL=redis_url,
        # The per-key publish rate (1000/s by default) would measure the limit, not the service;
        # the throttle itself still runs on every request.
        NOTIFIER_PUBLISH_RATE_PER_KEY="100000000/s",
        NOTIFIER_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        RAW_REDIS_URL=redis_url,
    )
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


# The server variants: argv for a port. "uvicorn" is the documented production command.
UVICORN = [str(BIN / "uvicorn"), "notifier.asgi:application", "--lifespan", "off", "--no-access-log"]
SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn": lambda p: [*UVICORN, "--port", str(p), "--ws", "websockets-sansio", "--ws-per-message-deflate", "false"],
    "uvicorn-deflate": lambda p: [
        *UVICORN,
        "--port",
        str(p),
        "--ws",
        "websockets-sansio",
        "--ws-per-message-deflate",
        "true",
    ],
    "uvicorn-websockets": lambda p: [
        *UVICORN,
        "--port",
        str(p),
        "--ws",
        "websockets",
        "--ws-per-message-deflate",
        "false",
    ],
    "uvicorn-wsproto": lambda p: [*UVICORN, "--port", str(p), "--ws", "wsproto", "--ws-per-message-deflate", "false"],
    "daphne": lambda p: [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(p), "notifier.asgi:application"],
    "raw": lambda p: [
        str(BIN / "uvicorn"),
        "bench.raw_asgi:app",
        "--port",
        str(p),
        "--ws",
        "websockets-sansio",
        "--ws-per-message-deflate",
        "false",
        "--lifespan",
        "off",
        "--no-access-log",
    ],
    "node": lambda p: ["node", str(LOADGEN / "ceiling.mjs"), str(p)],
    "node-personal": lambda p: ["node", str(LOADGEN / "personal.mjs"), str(p)],
}


def server_available(kind: str) -> str | None:
    """None if this variant can run here, else why not."""
    if kind == "uvicorn-wsproto":
        try:
            import wsproto  # noqa: F401
        except ImportError:
            return "wsproto is not installed"
    return None


class Server(Process):
    def __init__(self, kind: str, env: dict[str, str], workdir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        super().__init__(f"{kind}:{self.port}", SERVERS[kind](self.port), env, workdir / f"{kind}-{self.port}.log")
        wait_until(self._healthy, f"{self.name} (log: {self.log_path})")

    @property
    def plain(self) -> bool:
        """A comparator (the plain ASGI app, a Node server), not notifier."""
        return self.kind == "raw" or self.kind.startswith("node")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/" if not self.plain else f"ws://127.0.0.1:{self.port}/"

    def _healthy(self) -> bool:
        if not self.alive():
            raise BenchError(f"{self.name} exited:\n{self.log_tail()}")
        path = "/healthz" if not self.plain else "/"
        try:
            with urllib.request.urlopen(f"{self.http}{path}", timeout=2) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False


class Worker(Process):
    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        concurrency: int | None = None,
        beat: bool = False,
        include: str | None = None,
    ) -> None:
        argv = [str(BIN / "celery"), "-A", "notifier", "worker", "--loglevel", "WARNING"]
        if include:
            argv += ["--include", include]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        log = workdir / f"celery-{free_port()}.log"
        if beat:
            argv += ["--beat", "--schedule", str(log.with_suffix(".schedule"))]
        super().__init__("celery", argv, env, log)


def post_json(url: str, body: Any, key: str) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")  # noqa: S310 - loopback
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ensure_loadgen() -> None:
    """Install the load generator's pinned dependencies (npm ci from its lock file) once."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise BenchError("node and npm are needed for the load generator (Debian: apt-get install nodejs npm)")
    stamp = LOADGEN / "node_modules" / ".installed"
    lock = LOADGEN / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run(  # noqa: S603
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],  # noqa: S607
        cwd=LOADGEN,
        check=True,
        timeout=300,
    )
    stamp.touch()


class LoadGen:
    """One run of bench/loadgen/loadgen.mjs; its JSON lines are read by a thread."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr_path = workdir / f"loadgen-{config['mode']}-{free_port()}.log"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(  # noqa: S603
                ["node", str(LOADGEN / "loadgen.mjs"), json.dumps(config)],  # noqa: S607
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue
        self.lines.put(None)

    def _next(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise BenchError(f"load generator: no {key!r} within {timeout:.0f}s; see {self.stderr_path}")
            try:
                item = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                self.proc.wait()
                err = self.stderr_path.read_text(errors="replace")[-2000:]
                raise BenchError(f"load generator exited ({self.proc.returncode}) before {key!r}:\n{err}")
            if key in item:
                value: dict[str, Any] = item[key]
                return value

    def ready(self, timeout: float = 300) -> dict[str, Any]:
        return self._next("ready", timeout)

    def result(self, timeout: float = 600) -> dict[str, Any]:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # "hold" mode ends when its stdin closes
        result = self._next("result", timeout)
        self.proc.wait(30)
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
