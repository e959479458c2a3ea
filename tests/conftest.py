from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from .offline import stack  # noqa: F401 - a fixture: the Web Push and webhook stack
from .support import (
    RedisServer,
    Server,
    create_postgres_database,
    drop_postgres_database,
    manage,
    postgres_database_settings,
    service_env,
)
from .wsclient import Client

# This process drives the ASGI app in process (communicators) but is no server: calling
# notifier.asgi's application must not start a dispatcher publishing the tests' scheduled rows
# behind their backs. The server processes the tests start dispatch as `make run` does.
settings.NOTIFIER["DISPATCH_IN_SERVER"] = False


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """pytest-django's test database is a PostgreSQL one this run creates (and drops), never
    SQLite: state that outlives a connection lives in PostgreSQL in production."""
    from django.db import connections

    settings.DATABASES["default"] = postgres_database_settings(f"notifier_{os.getpid()}")
    connections.settings["default"] = connections.configure_settings(settings.DATABASES)["default"]
    with contextlib.suppress(AttributeError):  # a connection made before (to the SQLite default): drop it
        del connections["default"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notifier")


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A real Redis the test session starts itself (never the machine's shared one)."""
    server = RedisServer(workdir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_db() -> Iterator[str]:
    """A migrated PostgreSQL database shared by the server processes of this session (its
    DATABASE_URL): their state lives where production's does."""
    url = create_postgres_database(f"notifier_service_{os.getpid()}")
    manage(service_env(None, url), "migrate", "--verbosity", "0")
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="session")
def api_key(service_db: str) -> str:
    out = manage(service_env(None, service_db), "create_api_key", "integration-tests")
    return out.strip().splitlines()[-1]


AMQP = "amqp://guest:guest@127.0.0.1:5672"


def rabbitmqctl(*args: str) -> None:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)  # noqa: S607
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def rabbitmq_vhost() -> Iterator[str]:
    """A virtual host of its own on this machine's RabbitMQ (the Celery broker of the cluster
    mode), so no queue is shared with anyone; its AMQP URL."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("RabbitMQ is needed on 127.0.0.1:5672 (Debian: apt-get install rabbitmq-server)")
    vhost = f"notifier-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"{AMQP}/{vhost}"
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="module")
def servers(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[tuple[Server, Server]]:
    """Two Daphne processes sharing the session's Redis (one pair per test module)."""
    env = service_env(redis_server.url, service_db)
    first, second = Server(env, workdir), Server(env, workdir)
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(autouse=True)
async def close_leftover_clients() -> AsyncIterator[None]:
    """A failing test's open WebSocket clients are closed here, not by a later test's GC."""
    yield
    await Client.close_leftovers()
