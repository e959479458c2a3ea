"""What an attacker tried by hand (docs/security.md, "Tried as an attacker would"), kept as regressions.

Each input here once gave a 500, a traceback, a stalled event loop or a connection left in
the hub for good; each must now get its documented error.
"""

from __future__ import annotations

import json
import uuid

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from realtime import protocol
from realtime.codes import ErrorCode
from realtime.logs import redact
from realtime.publish import InvalidPublish, encode_data
from realtime.sse import RequestError, parse_positions

from .support import Server, post_json
from .wsclient import Client

DEEP = 5_000  # nesting that makes json.loads / json.dumps raise RecursionError


def test_a_deeply_nested_frame_is_a_bad_frame() -> None:
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse_frame("[" * DEEP, None, 1_000_000)
    assert refused.value.code == ErrorCode.BAD_FRAME


def test_deeply_nested_data_is_refused_as_invalid() -> None:
    data: list = []
    for _ in range(DEEP):
        data = [data]
    with pytest.raises(InvalidPublish, match="nested too deeply"):
        encode_data(data)


@pytest.mark.parametrize(
    "since",
    ['{"news": [Infinity, "e"]}', '{"news": [1e999, "e"]}', '{"news": [-1, "e"]}', '{"news": ["5", "e"]}',
     '{"news": [true, "e"]}', '{"news": [5, 7]}', '{"news": [5, "' + "e" * 100 + '"]}', "[" * DEEP],
)  # fmt: skip
def test_sse_positions_must_be_ones_the_endpoint_sent(since: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_positions(since)
    assert (refused.value.status, refused.value.code) == (400, "bad_since")


def test_sse_positions_it_sent_are_read_back() -> None:
    (position,) = parse_positions('{"news": [5, "7cdabf7a"]}').values()
    assert (position.offset, position.epoch) == (5, "7cdabf7a")


def test_a_server_request_line_never_logs_its_query() -> None:
    line = '127.0.0.1:5 - "WebSocket /ws/?%74oken=%65yJhbGciOi.x.y" [accepted]'
    assert redact(line) == '127.0.0.1:5 - "WebSocket /ws/?[query redacted]" [accepted]'
    assert "secret" not in redact('"GET /sse/?channel=a&t%6Fken=secret HTTP/1.1" 200')


@pytest.mark.integration
async def test_a_websocket_to_another_path_is_refused_at_the_handshake(servers: tuple[Server, Server]) -> None:
    server = servers[0]
    for path in ("/ws/nope", "/sse/", "/"):
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=10)
        assert refused.value.response.status_code == 403, path
    assert "No route found" not in server.log() and "Traceback" not in server.log()


@pytest.mark.integration
async def test_deep_nesting_over_http_and_websocket_gets_documented_errors(
    servers: tuple[Server, Server], api_key: str
) -> None:
    server = servers[0]
    url = f"{server.http}/api/notify"
    status, answer = post_json(url, None, api_key, raw=b"[" * DEEP)
    assert (status, answer["code"]) == (400, "invalid_json")
    deep_data = b'{"channel": "news", "event": "x", "data": ' + b"[" * 990 + b"]" * 990 + b"}"
    status, answer = post_json(url, None, api_key, raw=deep_data)
    assert status == 400 and answer["code"] in {"invalid", "invalid_json"}, answer
    status, answer = post_json(f"{server.http}/api/tokens", None, api_key, raw=b"[" * DEEP)
    assert (status, answer["code"]) == (400, "invalid_json")

    channel = f"hard.{uuid.uuid4().hex[:8]}"
    client = await Client.connect(server.ws)
    await client.subscribe(channel)
    await client.ws.send("[" * DEEP)
    assert (await client.recv())["code"] == "bad_frame"
    await client.subscribe(f"{channel}.after")  # the socket is still usable
    await client.close()
    assert "Traceback" not in server.log()


@pytest.mark.integration
def test_a_large_body_with_an_unknown_key_is_refused_before_it_is_parsed(servers: tuple[Server, Server]) -> None:
    events = [{"channel": "news", "event": "x", "data": "y" * 900}] * 400  # ~400 KB, over the pre-check size
    body = json.dumps({"events": events}).encode()
    for path in ("/api/notify/batch", "/api/notify"):
        status, answer = post_json(f"{servers[0].http}{path}", None, "nk_not-a-real-key", raw=body[:-1])
        # 401 for the key, though the body is not even valid JSON: it was never parsed.
        assert (status, answer["code"]) == (401, "invalid_api_key")
