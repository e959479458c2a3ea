"""nginx in front (Debian's, started by the test) with deploy/nginx/notifier-locations.conf."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from .support import ROOT, Process, RedisServer, Server, free_port, post_json, service_env, wait_until
from .wsclient import Client

pytestmark = pytest.mark.integration

CONFIG = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    include {log_format};
    access_log {dir}/access.log notifier;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream notifier {{
        least_conn;
        {servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        include {locations};
    }}
}}
"""


@pytest.fixture(scope="module")
def proxy(redis_server: RedisServer, service_db: str, workdir: Path) -> Iterator[tuple[str, list[Server], Path]]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.fail("nginx is not installed: `apt-get install nginx` (bash .ci/run does it)", pytrace=False)
    env = service_env(redis_server.url, service_db)
    servers = [Server(env, workdir, kind="uvicorn") for _ in range(2)]
    directory = workdir / f"nginx-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        CONFIG.format(
            dir=directory,
            port=port,
            locations=ROOT / "deploy/nginx/notifier-locations.conf",
            log_format=ROOT / "deploy/nginx/notifier-log-format.conf",
            servers="\n".join(f"server 127.0.0.1:{s.port};" for s in servers),
        )
    )
    nginx = Process("nginx", [binary, "-c", str(conf), "-p", str(directory)], {}, directory / "stdout.log")

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            assert nginx.alive(), (directory / "error.log").read_text()
            return False

    wait_until(up, what="nginx")
    yield f"127.0.0.1:{port}", servers, directory / "access.log"
    nginx.stop()
    for server in servers:
        server.stop()


async def test_websockets_through_nginx(proxy: tuple[str, list[Server], Path], api_key: str) -> None:
    address, _, _ = proxy
    channel = f"nginx.{uuid.uuid4().hex[:8]}"
    # A browser behind the proxy: its Origin is the public host, which nginx passes as Host.
    clients = [await Client.connect(f"ws://{address}/ws/", origin=f"http://{address}") for _ in range(4)]
    for client in clients:
        await client.subscribe(channel)
    status, answer = post_json(f"http://{address}/api/notify", {"channel": channel, "event": "via-nginx"}, api_key)
    assert status == 202, answer
    for client in clients:
        (event,) = await client.events(1)
        assert event["event"] == "via-nginx"
        await client.close()


async def test_server_sent_events_through_nginx_are_not_buffered(
    proxy: tuple[str, list[Server], Path], api_key: str
) -> None:
    address, _, _ = proxy
    channel = f"nginx.{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("GET", f"http://{address}/sse/?channel={channel}") as response:
            assert response.status_code == 200
            lines = response.aiter_lines()

            async def next_data() -> dict:
                while True:
                    line = await asyncio.wait_for(anext(lines), 10)
                    if line.startswith("data: "):
                        return json.loads(line.removeprefix("data: "))

            assert (await next_data())["type"] == "subscribed"
            status, _ = await asyncio.to_thread(
                post_json, f"http://{address}/api/notify", {"channel": channel, "event": "streamed"}, api_key
            )
            assert status == 202
            # The event arrives while the response is still open: nginx did not hold it back.
            assert (await next_data())["event"] == "streamed"


async def test_the_access_log_never_records_tokens(proxy: tuple[str, list[Server], Path]) -> None:
    """/ws/ and /sse/ take the connection token in the query string; the access log format
    (deploy/nginx/notifier-log-format.conf) logs the path without it."""
    address, _, access_log = proxy
    ws_token, sse_token = f"wstoken{uuid.uuid4().hex}", f"ssetoken{uuid.uuid4().hex}"
    # The token is refused (or the connection is anonymous): either way the request is logged.
    with contextlib.suppress(websockets.WebSocketException, TimeoutError):
        async with websockets.connect(f"ws://{address}/ws/?token={ws_token}", origin=f"http://{address}") as ws:
            await asyncio.wait_for(ws.recv(), 5)
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", f"http://{address}/sse/?channel=news&token={sse_token}") as response:
            assert response.status_code in (200, 401, 403)

    def logged() -> bool:  # nginx writes a line when the request (the socket) ends
        text = access_log.read_text()
        return "GET /ws/" in text and "GET /sse/" in text

    wait_until(logged, timeout=10, what=f"the /ws/ and /sse/ requests in {access_log}")
    text = access_log.read_text()
    assert ws_token not in text and sse_token not in text and "token=" not in text, text
