"""Property-based tests against a real server: any frame or body gets a documented answer.

Never a 500, a traceback or a dead connection (other than a documented close code).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from realtime import vapid
from realtime.codes import ErrorCode

from .support import VENV_BIN, RedisServer, Server, service_env

pytestmark = pytest.mark.integration

REPLY_TYPES = {
    "error",
    "pong",
    "subscribed",
    "unsubscribed",
    "published",
    "authenticated",
    "event",
    "ping",
    "join",
    "leave",
}
DOCUMENTED_CLOSES = {4500, 4001, 4502, 4503}  # bad token, expired token, abuse, too many connections
ERROR_CODES = {str(code) for code in ErrorCode} | {"too_many_connections"}
HTTP_CODES = {202, 400, 401, 403, 413, 429}


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[Server]:
    env = service_env(
        redis_server.url,
        service_db,
        NOTIFIER_CLIENT_FRAMES_PER_SEC="100000",
        NOTIFIER_PUBLISH_RATE_PER_KEY="1000000/s",
        NOTIFIER_NAMESPACES=json.dumps({"chat": {"client_publish": True}}),
        NOTIFIER_VAPID_PRIVATE_KEY=vapid.generate_private_key(),  # else /api/push/key answers 503
        NOTIFIER_VAPID_SUBJECT="mailto:fuzz@example.com",
    )
    proc = Server(env, workdir)
    yield proc
    assert "Traceback" not in proc.log(), proc.log()[-3000:]
    proc.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
channels = st.sampled_from(["news", "chat:lobby", "private:x", "user:1", "nope:x", "", "a b", "x" * 200]) | st.text(
    max_size=12
)
ops = st.sampled_from(["subscribe", "unsubscribe", "ping", "pong", "publish", "auth", "refresh"]) | st.text(max_size=8)
frames = (
    st.fixed_dictionaries(
        {"op": ops},
        optional={
            "channel": channels | json_values,
            "since": st.fixed_dictionaries({}, optional={"offset": st.integers() | json_values, "epoch": json_values})
            | json_values,
            "token": st.text(max_size=30) | json_values,
            "event": st.text(max_size=10) | json_values,
            "data": json_values,
            "ref": st.integers() | st.text(max_size=70) | json_values,
        },
    ).map(json.dumps)
    | st.text(max_size=50)
    | json_values.map(json.dumps)
)


class Session:
    """One socket, reopened only after a documented close."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self.probes = 0

    def socket(self) -> ClientConnection:
        if self.ws is None:
            self.ws = connect(self.url, open_timeout=10, legacy=True)
            assert json.loads(self.ws.recv(timeout=10))["type"] == "hello"
        return self.ws

    def exchange(self, frame: str) -> None:
        ws = self.socket()
        self.probes += 1
        probe = f"probe-{self.probes}"
        try:
            ws.send(frame)
            ws.send(json.dumps({"op": "ping", "ref": probe}))
            while True:
                reply = json.loads(ws.recv(timeout=10))
                assert reply.get("type") in REPLY_TYPES, reply
                if reply["type"] == "error":
                    assert reply["code"] in ERROR_CODES and reply["message"], reply
                if reply == {"type": "pong", "ref": probe}:
                    return
        except ConnectionClosed as closed:
            self.ws = None
            assert closed.rcvd is not None and closed.rcvd.code in DOCUMENTED_CLOSES, closed
        except BaseException:
            ws.close()  # start the next example on a clean socket
            self.ws = None
            raise


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
def test_any_client_frame_gets_a_documented_answer(server: Server, frame: str) -> None:
    session = _sessions.setdefault(server.ws, Session(server.ws))
    session.exchange(frame)


_sessions: dict[str, Session] = {}

bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "channel": channels | json_values,
            "channels": st.lists(channels, max_size=3) | json_values,
            "user": st.text(max_size=10) | st.integers() | json_values,
            "users": st.lists(st.text(max_size=5), max_size=3) | json_values,
            "event": st.text(max_size=10) | json_values,
            "data": json_values,
            "idempotency_key": st.text(max_size=10) | json_values,
        },
    )
    | json_values
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, batch=st.booleans())
def test_any_publish_body_gets_a_documented_answer(server: Server, api_key: str, body: Any, batch: bool) -> None:
    path, payload = ("/api/notify/batch", {"events": [body, body]}) if batch else ("/api/notify", body)
    response = httpx.post(
        f"{server.http}{path}", json=payload, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    )
    assert response.status_code in HTTP_CODES, response.text
    answer = response.json()
    if response.status_code == 202:
        assert set(answer) == ({"results"} if batch else {"id", "channels"})
    else:
        assert set(answer) == {"code", "message", "details"}


def test_schemathesis_finds_no_server_error_or_schema_violation(server: Server, api_key: str) -> None:
    result = subprocess.run(
        [
            str(VENV_BIN / "st"),
            "run",
            f"{server.http}/api/schema/",
            "--url",
            server.http,
            "-H",
            f"Authorization: Bearer {api_key}",
            "--no-color",
            "--max-examples",
            "40",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
