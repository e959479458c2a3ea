"""The JS client end to end: Node and a real headless Chromium against real servers.

Pytest starts Redis and the Daphne processes (tests/support.py), then runs the scripts in
clients/js/e2e/ with the URLs and the API key in environment variables. The scripts print one
JSON object per line ({"ready": true}, {"received": n}, {"result": {...}}); the restart tests
read those lines to know when to stop and restart the server the client is connected to, while
the events keep coming through another process. Node, clients/js/node_modules (npm ci) and
Debian's Chromium are required: without them these tests fail and say how to install them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from .support import ROOT, RedisServer, Server, post_json, service_env

# Longer than the scripts' own SCRIPT_TIMEOUT_SECS, so their clearer failure is the one reported.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

JS_DIR = ROOT / "clients" / "js"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCRIPT_TIMEOUT_SECS = 120
# Chat rooms publish from the browser (/demo/chat/); production enables it per namespace.
CHAT_NAMESPACES = json.dumps({"chat": {"client_publish": True}})
# Connection tokens are minted by the tests (PyJWT) and by the Node scripts with this secret.
JWT_SECRET = "test-jwt-secret-for-the-js-client-tests"


# -- prerequisites: fail (never skip) with the fix ---------------------------------------------


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: the JS client's end-to-end tests need Node.js 20+ "
            "(Debian: `apt-get install nodejs npm`, or run `bash .ci/run`).",
            pytrace=False,
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.fail(f"node {version} is too old: the JS client's tests need Node.js 20+.", pytrace=False)
    for package in ("ws", "playwright-core"):
        if not (JS_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(
                f"clients/js/node_modules/{package} is missing: run `npm ci` in clients/js "
                "(`make test` does it before running pytest).",
                pytrace=False,
            )
    return node


def require_chromium() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests drive Debian's Chromium "
            "(`apt-get install chromium`, or run `bash .ci/run`). No browser is ever downloaded.",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def node() -> str:
    return require_node()


@pytest.fixture(scope="module")
def chromium(node: str) -> Path:
    return require_chromium()


# -- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_env(redis_server: RedisServer, service_db: str) -> dict[str, str]:
    # NOTIFIER_SERVE_STATIC serves /static/ from the finders in-process (notifier/asgi.py), as the
    # embedded mode does; production serves the collectstatic output from its proxy instead.
    return service_env(
        redis_server.url,
        service_db,
        NOTIFIER_SERVE_STATIC="1",
        NOTIFIER_NAMESPACES=CHAT_NAMESPACES,
        NOTIFIER_JWT_SECRET=JWT_SECRET,
    )


@pytest.fixture(scope="module")
def publisher(server_env: dict[str, str], workdir: Path) -> Iterator[Server]:
    """A server that stays up: tests publish through it while they restart another one."""
    server = Server(server_env, workdir)
    yield server
    server.stop()


@pytest.fixture
def restartable(server_env: dict[str, str], workdir: Path) -> Iterator[list[Server]]:
    """The server a client connects to; a test restarts it on the same port (holder[0])."""
    holder = [Server(server_env, workdir)]
    yield holder
    holder[0].stop()


@pytest.fixture(scope="module")
def strict_expiry(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[Server]:
    """A server that ends a connection soon after its token expires: 1 s grace, checked every 1 s."""
    env = service_env(
        redis_server.url,
        service_db,
        NOTIFIER_JWT_SECRET=JWT_SECRET,
        NOTIFIER_TOKEN_GRACE_SECS="1",
        NOTIFIER_HEARTBEAT_SECS="1",
    )
    server = Server(env, workdir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedded(service_db: str, workdir: Path) -> Iterator[Server]:
    """The `make run` mode: no Redis, in-process layer and history, static files served."""
    server = Server(service_env(None, service_db), workdir)
    yield server
    server.stop()


# -- running a script --------------------------------------------------------------------------


class Script:
    """A node script from clients/js/e2e/, its JSON lines read as they come."""

    def __init__(self, node: str, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        full_env = {**os.environ, "ARTIFACTS": str(ARTIFACTS), "CHROMIUM": str(CHROMIUM), **env}
        self.proc = subprocess.Popen(
            [node, f"e2e/{name}"],
            cwd=JS_DIR,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self.messages.put(message)
        self.messages.put(None)  # end of output

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def output(self) -> str:
        return f"--- {self.name} stdout:\n{''.join(self.stdout)[-4000:]}--- stderr:\n{''.join(self.stderr)[-4000:]}"

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        while True:
            try:
                message = self.messages.get(timeout=SCRIPT_TIMEOUT_SECS)
            except queue.Empty:
                self.kill()
                raise AssertionError(f"{self.name}: no {what} within {SCRIPT_TIMEOUT_SECS}s\n{self.output()}") from None
            if message is None:
                self.proc.wait(10)
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before {what}\n{self.output()}"
                ) from None
            if predicate(message):
                return message

    def result(self) -> dict[str, Any]:
        """Wait for the script to finish; it must exit 0 after printing its result."""
        try:
            self.proc.wait(SCRIPT_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not finish within {SCRIPT_TIMEOUT_SECS}s\n{self.output()}") from None
        message = self.wait_for(lambda m: "result" in m, "result") if self.proc.returncode == 0 else None
        assert self.proc.returncode == 0 and message is not None, f"{self.name} failed\n{self.output()}"
        return dict(message["result"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        """Stop the script if it still runs, and release its pipes."""
        self.kill()
        for reader in self.readers:
            reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def scripts() -> Iterator[list[Script]]:
    started: list[Script] = []
    yield started
    for script in started:
        script.close()


def run(node: str, scripts: list[Script], name: str, **env: str) -> Script:
    script = Script(node, name, env)
    scripts.append(script)
    return script


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def mint_token(user: str, expires_in: int = 600) -> str:
    """A connection token, as a backend signs it (docs/security.md)."""
    return jwt.encode({"sub": user, "exp": int(time.time()) + expires_in}, JWT_SECRET, algorithm="HS256")


def publish_range(server: Server, key: str, channel: str, first: int, last: int) -> None:
    for n in range(first, last + 1):
        status, answer = post_json(
            f"{server.http}/api/notify", {"channel": channel, "event": "tick", "data": {"n": n}}, key
        )
        assert status == 202, answer
        assert answer["channels"][channel]["offset"] == n, answer


def restart_mid_stream(
    script: Script,
    holder: list[Server],
    env: dict[str, str],
    publisher: Server,
    key: str,
    channel: str,
    count: int,
    *,
    crash: bool,
) -> int:
    """Publish events 1..count to `channel` through `publisher` while the client's server
    (holder[0]) is stopped (SIGTERM, or SIGKILL with `crash`) and restarted on its port: a
    third of the events before, a third while it is down, the rest right after it is back
    (the client is still reconnecting). Returns how many events the client had by then."""
    first_cut, second_cut = count // 3, 2 * count // 3
    script.wait_for(lambda m: m.get("ready") is True, "ready")
    publish_range(publisher, key, channel, 1, first_cut)
    script.wait_for(lambda m: m.get("received") == first_cut, f"{first_cut} events received")
    server = holder[0]
    if crash:  # no close frame: the client sees the socket die
        server.signal(signal.SIGKILL)
        server.proc.wait()
    else:
        server.stop()
    publish_range(publisher, key, channel, first_cut + 1, second_cut)
    holder[0] = Server(env, server.log_path.parent, port=server.port)
    publish_range(publisher, key, channel, second_cut + 1, count)
    return first_cut


# -- Node ----------------------------------------------------------------------------------------


def test_node_client_receives_an_http_publish_and_chat_publishes(
    node: str, publisher: Server, api_key: str, scripts: list[Script]
) -> None:
    channel, room = unique("e2e.http."), unique("e2e-")
    script = run(
        node,
        scripts,
        "publish.mjs",
        NOTIFIER_WS=publisher.ws,
        NOTIFIER_HTTP=publisher.http,
        NOTIFIER_API_KEY=api_key,
        E2E_CHANNEL=channel,
        E2E_ROOM=room,
    )
    result = script.result()
    assert result["event"]["channel"] == channel and result["event"]["offset"] == 1
    assert result["published"]["offset"] == 1
    assert result["states"] == ["connecting", "connected", "closed"]


def test_node_client_gets_every_event_once_in_order_across_a_server_restart(
    node: str,
    restartable: list[Server],
    server_env: dict[str, str],
    publisher: Server,
    api_key: str,
    scripts: list[Script],
) -> None:
    channel, count = unique("e2e.restart."), 60
    script = run(node, scripts, "restart.mjs", NOTIFIER_WS=restartable[0].ws, E2E_CHANNEL=channel, E2E_COUNT=str(count))
    had = restart_mid_stream(script, restartable, server_env, publisher, api_key, channel, count, crash=False)
    result = script.result()
    assert result["count"] == count
    assert result["resumedAfter"][0] == had, result  # resubscribed with since = the last offset it had
    assert all(s["recovered"] for s in result["subscriptions"]), result
    assert result["errors"] == [], result


def test_node_client_refreshes_short_lived_tokens_and_stays_connected_past_their_expiry(
    node: str, strict_expiry: Server, api_key: str, scripts: list[Script]
) -> None:
    """3 s tokens on a server that closes expired connections 1 s after `exp` (NOTIFIER_TOKEN_GRACE_SECS=1,
    NOTIFIER_HEARTBEAT_SECS=1): the client refreshes them on its first connection and gets every
    event; a client holding the same token as a string is closed with 4001."""
    user = unique("refresh-")
    script = run(
        node,
        scripts,
        "refresh.mjs",
        NOTIFIER_WS=strict_expiry.ws,
        NOTIFIER_HTTP=strict_expiry.http,
        NOTIFIER_API_KEY=api_key,
        NOTIFIER_JWT_SECRET=JWT_SECRET,
        E2E_USER=user,
    )
    result = script.result()
    assert result["refreshes"] >= 3 and result["outlivedSecs"] > 3, result
    assert result["count"] >= 10, result
    assert result["sent"][0] == "auth" and set(result["sent"][1:]) == {"refresh"}, result
    assert result["states"] == ["connecting", "connected", "closed"], result
    assert result["controlErrors"] == [4001], result


# -- Chromium ------------------------------------------------------------------------------------


def test_demo_page_in_chromium_shows_every_event_once_across_a_server_restart(
    node: str,
    chromium: Path,
    restartable: list[Server],
    server_env: dict[str, str],
    publisher: Server,
    api_key: str,
    scripts: list[Script],
    capsys: pytest.CaptureFixture[str],
) -> None:
    channel, count = unique("e2e.demo."), 30
    script = run(
        node,
        scripts,
        "browser-demo.mjs",
        NOTIFIER_HTTP=restartable[0].http,
        NOTIFIER_API_KEY=api_key,
        E2E_CHANNEL=channel,
        E2E_COUNT=str(count),
    )
    restart_mid_stream(script, restartable, server_env, publisher, api_key, channel, count, crash=True)
    result = script.result()
    assert result["count"] == count
    assert result["publishResult"].startswith("202 ")
    screenshot = Path(result["screenshot"])
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\n  screenshot: {screenshot}")


def test_demo_page_token_field_connects_as_the_user_and_the_chat_room_shows_who_is_in_it(
    node: str,
    chromium: Path,
    publisher: Server,
    api_key: str,
    scripts: list[Script],
    capsys: pytest.CaptureFixture[str],
) -> None:
    user, other = unique("alice-"), unique("bob-")
    script = run(
        node,
        scripts,
        "browser-token.mjs",
        NOTIFIER_HTTP=publisher.http,
        NOTIFIER_API_KEY=api_key,
        E2E_USER=user,
        E2E_TOKEN=mint_token(user),
        E2E_USER_B=other,
        E2E_TOKEN_B=mint_token(other),
        E2E_ROOM=unique("room-"),
    )
    result = script.result()
    assert result["user"] == user
    assert result["row"][1:] == [f"user:{user}", "#1", "account.updated", '{"text":"for you only"}']
    assert result["members"] == sorted([user, other])
    for path in result["screenshots"]:
        assert Path(path).is_file() and Path(path).stat().st_size > 10_000
    with capsys.disabled():
        for path in result["screenshots"]:
            print(f"\n  screenshot: {path}")


def test_chat_room_in_two_chromium_tabs_on_the_embedded_server(
    node: str, chromium: Path, embedded: Server, scripts: list[Script], capsys: pytest.CaptureFixture[str]
) -> None:
    script = run(node, scripts, "browser-chat.mjs", NOTIFIER_HTTP=embedded.http, E2E_ROOM=unique("room-"))
    result = script.result()
    assert [m["offset"] for m in result["messages"]] == [1, 2, 3]
    assert result["classic"]["state"] == "connected"
    for path in result["screenshots"]:
        assert Path(path).is_file() and Path(path).stat().st_size > 10_000
    with capsys.disabled():
        for path in result["screenshots"]:
            print(f"\n  screenshot: {path}")


def test_chat_room_in_chromium_through_redis(
    node: str, chromium: Path, publisher: Server, scripts: list[Script], tmp_path: Path
) -> None:
    """The same chat in production mode: Redis layer and history, client publishing enabled."""
    room = unique("room-")
    script = run(
        node, scripts, "browser-chat.mjs", NOTIFIER_HTTP=publisher.http, E2E_ROOM=room, ARTIFACTS=str(tmp_path)
    )
    result = script.result()
    assert [m["offset"] for m in result["messages"]] == [1, 2, 3]


# -- serving the client --------------------------------------------------------------------------


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


@pytest.mark.parametrize("mode", ["embedded", "debug"])
def test_the_service_serves_the_client_and_the_demo_pages(mode: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue("embedded" if mode == "embedded" else "publisher")
    for name in ("notifier.js", "notifier.global.js", "notifier-sw.js"):
        status, content_type, body = get(f"{server.http}/static/{name}")
        assert status == 200 and content_type.startswith("text/javascript"), (name, status, content_type)
        assert body == (JS_DIR / name).read_bytes(), f"/static/{name} differs from clients/js/{name}"
    for path in (
        "package.json",
        "package-lock.json",
        "build.mjs",
        "test/build.test.js",
        "e2e/lib.mjs",
        "node_modules/ws/package.json",
        "README.md",
    ):
        assert get(f"{server.http}/static/{path}")[0] == 404, path
    status, content_type, body = get(f"{server.http}/demo/")
    assert status == 200 and content_type.startswith("text/html")
    assert b'import { NotifierClient } from "/static/notifier.js";' in body
    status, _, body = get(f"{server.http}/demo/chat/lobby/")
    assert status == 200 and b"chat:lobby" in body


def test_inbox_demo_in_two_tabs_of_chromium_stays_in_step_and_survives_a_reload(
    node: str,
    chromium: Path,
    publisher: Server,
    api_key: str,
    scripts: list[Script],
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = unique("reader-")
    script = run(
        node,
        scripts,
        "browser-inbox.mjs",
        NOTIFIER_HTTP=publisher.http,
        NOTIFIER_API_KEY=api_key,
        E2E_USER=user,
        E2E_TOKEN=mint_token(user),
    )
    result = script.result()
    assert result["listed"] == 3
    for path in result["screenshots"]:
        assert Path(path).is_file() and Path(path).stat().st_size > 10_000
    with capsys.disabled():
        print(f"\n  inbox: a read in tab A reached tab B in {result['markedAcrossTabsMs']} ms")
        for path in result["screenshots"]:
            print(f"  screenshot: {path}")
