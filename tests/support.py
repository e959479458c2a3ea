"""Real components for integration tests: a Redis server, Daphne processes, a Celery worker.

Each helper starts a real process on a free port and fails loudly (never skips) when it
cannot, saying how to fix it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_SECS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float = START_TIMEOUT_SECS, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def redis_server_binary() -> str:
    """The redis-server binary (also the Sentinel's); fails, never skips, when it is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed. Install it (Debian: `apt-get install redis-server`) "
            "or run `bash .ci/run`, which installs what a fresh machine lacks.",
            pytrace=False,
        )
    return binary


def wait_for_redis_process(proc: subprocess.Popen[bytes], ready: Any, what: str, log_path: Path) -> None:
    """Until `ready()` is true; fails at once (never skips) if the process exited meanwhile."""

    def up() -> bool:
        try:
            return bool(ready())
        except redis.RedisError:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}; see {log_path}", pytrace=False)
            return False

    wait_until(up, what=what)


class RedisServer:
    """A private redis-server on a free port; stop() and start() keep the port."""

    def __init__(self, workdir: Path) -> None:
        binary = redis_server_binary()
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def dump_path(self) -> Path:
        """Its RDB file (written only by SAVE: automatic snapshots are off), loaded at start."""
        return self.workdir / f"redis-{self.port}.rdb"

    def client(self) -> redis.Redis:
        """A client for the test itself; use it as a context manager so its socket is closed."""
        return redis.Redis(port=self.port, socket_timeout=5)

    def command(self, *args: str) -> object:
        """Run one command on a short-lived connection."""
        with self.client() as client:
            return client.execute_command(*args)

    def start(self) -> None:
        log_path = self.workdir / f"redis-{self.port}.log"
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--maxmemory-policy",
                    "noeviction",
                    "--dir",
                    str(self.workdir),
                    "--dbfilename",
                    self.dump_path.name,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        wait_for_redis_process(
            self.proc, lambda: bool(self.command("PING")), f"redis-server on port {self.port}", log_path
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Process:
    """A child process with its output in a log file, stopped on exit."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()


POSTGRES_URL_VARIABLE = "NOTIFIER_TEST_DATABASE_URL"


def maintenance_connection(config: dict[str, Any]) -> dict[str, Any]:
    """psycopg.connect's arguments for the server's `postgres` database, as the Django database
    settings `config` reach the server (to create and drop databases there)."""
    connect = {"dbname": "postgres", "user": config.get("USER") or None, "password": config.get("PASSWORD") or None}
    return connect | {"host": config.get("HOST") or None, "port": config.get("PORT") or None}


def postgres_database_settings(name: str) -> dict[str, Any]:
    """Django settings for a database `name` on a real PostgreSQL server: the machine's (local
    socket, the current user's role) unless NOTIFIER_TEST_DATABASE_URL names another. Fails,
    never skips, when the server cannot be reached, saying how to fix it; as root, makes the
    role it needs (with CREATEDB) when it is missing."""
    import dj_database_url
    import psycopg

    url = os.environ.get(POSTGRES_URL_VARIABLE) or f"postgres:///{name}"
    config: dict[str, Any] = dict(dj_database_url.parse(url))
    config["NAME"] = name
    connect = maintenance_connection(config)
    try:
        psycopg.connect(**connect, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        role_missing = "role" in str(exc) and "does not exist" in str(exc)
        if not (role_missing and os.geteuid() == 0 and shutil.which("runuser")):
            pytest.fail(
                f"PostgreSQL is not reachable ({exc}). The tests create their own database on a real "
                "server: install and start it (Debian: `apt-get install postgresql`, then "
                "`pg_ctlcluster 15 main start`), or set NOTIFIER_TEST_DATABASE_URL=postgres://user:pw@host/x "
                "to a role that may create databases.",
                pytrace=False,
            )
        role = connect["user"] or os.environ.get("USER") or "root"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "psql", "-qc", f'CREATE ROLE "{role}" LOGIN CREATEDB'],
            check=True,
            cwd="/",
            timeout=30,
        )
    return config


def create_postgres_database(name: str) -> str:
    """A new, empty PostgreSQL database `name` (dropped first if a crashed run left it) for the
    server processes tests start; its DATABASE_URL."""
    import psycopg
    from psycopg import sql

    config = postgres_database_settings(name)
    connect = maintenance_connection(config)
    with psycopg.connect(**connect, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    credentials = config.get("USER") or ""
    if credentials and config.get("PASSWORD"):
        credentials += f":{config['PASSWORD']}"
    at = f"{credentials}@" if credentials else ""
    where = f"{config.get('HOST') or ''}{':' + str(config['PORT']) if config.get('PORT') else ''}"
    return f"postgres://{at}{where}/{name}"


def drop_postgres_database(url: str) -> None:
    import dj_database_url
    import psycopg
    from psycopg import sql

    config: dict[str, Any] = dict(dj_database_url.parse(url))
    connect = maintenance_connection(config)
    with psycopg.connect(**connect, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(config["NAME"])))


def service_env(redis_url: str | None, db: Path | str, **extra: str) -> dict[str, str]:
    """The environment of a server process: `db` is a DATABASE_URL, or an SQLite file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "NOTIFIER_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="notifier.settings",
        DJANGO_SECRET_KEY="test-secret-key-for-integration-tests-only",
        DATABASE_URL=db if isinstance(db, str) else f"sqlite:///{db}",
        PYTHONUNBUFFERED="1",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def server_argv(kind: str, port: int) -> list[str]:
    """The documented command line of each supported ASGI server."""
    if kind == "daphne":
        return [str(VENV_BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "notifier.asgi:application"]
    if kind == "uvicorn":
        return [
            str(VENV_BIN / "uvicorn"),
            "notifier.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "websockets-sansio",
            "--ws-per-message-deflate",
            "false",
            "--lifespan",
            "off",
            "--no-access-log",
        ]
    raise ValueError(kind)


class Server(Process):
    """An ASGI server process (Daphne or Uvicorn) serving notifier.asgi:application."""

    def __init__(self, env: dict[str, str], workdir: Path, port: int | None = None, kind: str = "daphne") -> None:
        self.port = port or free_port()
        self.kind = kind
        super().__init__(f"{kind}:{self.port}", server_argv(kind, self.port), env, workdir / f"{kind}-{self.port}.log")
        wait_until(self.healthy, what=f"daphne on port {self.port} (log: {self.log_path})")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def healthy(self) -> bool:
        if not self.alive():
            raise AssertionError(f"{self.name} exited:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.http}/healthz", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False


class Worker(Process):
    """A Celery worker process."""

    def __init__(self, env: dict[str, str], workdir: Path, concurrency: int = 2, beat: bool = False) -> None:
        log = workdir / f"celery-{free_port()}.log"
        beat_args = ["--beat", "--schedule", str(log.with_suffix(".schedule"))] if beat else []
        super().__init__(
            "celery",
            [
                str(VENV_BIN / "celery"),
                "-A",
                "notifier",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(concurrency),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *beat_args,
            ],
            env,
            log,
        )
        wait_until(lambda: "ready." in self.log() or not self.alive(), what=f"celery worker ({self.log_path})")
        if not self.alive():
            raise AssertionError(f"celery worker exited:\n{self.log()}")


def post_json(
    url: str, body: Any, key: str | None = None, raw: bytes | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """POST and return (status, decoded JSON body)."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def processes(*procs: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


def notify(server: Server, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/notify, which must be accepted; returns the answer."""
    status, answer = post_json(f"{server.http}/api/notify", body, key)
    assert status == 202, answer
    return dict(answer)


class SentinelServer:
    """A private Redis Sentinel (`redis-server <conf> --sentinel`) on a free port, monitoring one
    master on 127.0.0.1 with a quorum of 1 and a short down-after, so a failover takes seconds.
    `master_password` is the master's `requirepass`; `password`, the Sentinel's own."""

    def __init__(
        self,
        workdir: Path,
        master_port: int,
        master_name: str = "mymaster",
        down_after_ms: int = 1000,
        master_password: str = "",
        password: str = "",
        quorum: int = 1,
    ) -> None:
        binary = redis_server_binary()
        self.port = free_port()
        self.master_name = master_name
        self.password = password
        # Sentinel rewrites its configuration file (known replicas, epochs): each gets its own.
        config = workdir / f"sentinel-{self.port}.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {workdir}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} 10000\n"
            f"sentinel parallel-syncs {master_name} 1\n"
            + (f"sentinel auth-pass {master_name} {master_password}\n" if master_password else "")
            + (f"requirepass {password}\n" if password else "")
        )
        log_path = workdir / f"sentinel-{self.port}.log"
        self.log_path = log_path
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )

        wait_for_redis_process(
            self.proc,
            lambda: self.master_address() == ("127.0.0.1", master_port),
            f"redis sentinel on port {self.port}",
            log_path,
        )

    def client(self) -> redis.Redis:
        """A client of the Sentinel itself; use it as a context manager so its socket is closed."""
        return redis.Redis(port=self.port, password=self.password or None, socket_timeout=5, decode_responses=True)

    def master_address(self) -> tuple[str, int] | None:
        """The master's address as this Sentinel answers it now."""
        with self.client() as client:
            answer = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return (str(answer[0]), int(answer[1])) if answer else None

    def replica_ports(self) -> list[int]:
        """The replicas this Sentinel knows and considers up."""
        with self.client() as client:
            replicas = client.sentinel_slaves(self.master_name)
        return [int(r["port"]) for r in replicas if not r["is_sdown"] and not r["is_odown"]]

    def peer_count(self) -> int:
        """The other Sentinels watching the same master that this one has found."""
        with self.client() as client:
            return len(client.execute_command("SENTINEL", "SENTINELS", self.master_name))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
