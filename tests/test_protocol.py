from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime.codes import ErrorCode
from realtime.frames import error as error_frame
from realtime.frames import reply
from realtime.history import Position
from realtime.protocol import (
    Auth,
    Ping,
    ProtocolError,
    Publish,
    Subscribe,
    Unsubscribe,
    parse_frame,
)

LIMIT = 1024


def parse(frame: object) -> object:
    return parse_frame(frame if isinstance(frame, str) else json.dumps(frame), None, LIMIT)


def test_subscribe_with_since_and_ref() -> None:
    frame = parse({"op": "subscribe", "channel": "news", "since": {"offset": 41, "epoch": "e1"}, "ref": 7})
    assert frame == Subscribe("news", Position(41, "e1"), None, 7)


def test_other_ops() -> None:
    assert parse({"op": "unsubscribe", "channel": "a"}) == Unsubscribe("a")
    assert parse({"op": "ping", "ref": "x"}) == Ping("x")
    assert parse({"op": "publish", "channel": "chat:1", "event": "m", "data": [1]}) == Publish("chat:1", "m", [1])
    assert parse({"op": "auth", "token": "t"}) == Auth("t")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("nope", ErrorCode.BAD_FRAME),
        ("[]", ErrorCode.BAD_FRAME),
        ({"op": "fly"}, ErrorCode.UNKNOWN_OP),
        ({}, ErrorCode.UNKNOWN_OP),
        ({"op": "subscribe", "channel": "bad channel"}, ErrorCode.BAD_CHANNEL),
        ({"op": "subscribe", "channel": "a", "since": {"offset": "1"}}, ErrorCode.BAD_FRAME),
        ({"op": "subscribe", "channel": "a", "since": {"offset": True}}, ErrorCode.BAD_FRAME),
        ({"op": "subscribe", "channel": "a", "token": 5}, ErrorCode.BAD_FRAME),
        ({"op": "publish", "channel": "a"}, ErrorCode.BAD_FRAME),
        ({"op": "auth"}, ErrorCode.BAD_FRAME),
        ({"op": "ping", "ref": [1]}, ErrorCode.BAD_FRAME),
        ({"op": "ping", "ref": "x" * 65}, ErrorCode.BAD_FRAME),
        ("x" * (LIMIT + 1), ErrorCode.FRAME_TOO_LARGE),
        ('"' + "é" * (LIMIT // 2 + 1) + '"', ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_refused_frames(frame: object, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(frame)
    assert refused.value.code == code


def test_binary_is_refused() -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_frame(None, b"\x00", LIMIT)
    assert refused.value.code == ErrorCode.BAD_FRAME


def test_error_keeps_ref() -> None:
    with pytest.raises(ProtocolError) as refused:
        parse({"op": "subscribe", "channel": "", "ref": 3})
    assert refused.value.ref == 3


@given(st.text(max_size=200) | st.binary(max_size=50).map(lambda b: b.decode("latin-1")))
def test_any_text_parses_or_refuses_with_a_code(text: str) -> None:
    try:
        parse_frame(text, None, LIMIT)
    except ProtocolError as exc:
        assert exc.code in set(ErrorCode)


def test_reply_and_error_frames() -> None:
    assert json.loads(reply("pong", 5)) == {"type": "pong", "ref": 5}
    assert json.loads(reply("pong")) == {"type": "pong"}
    assert json.loads(error_frame(ErrorCode.FORBIDDEN, "no")) == {"type": "error", "code": "forbidden", "message": "no"}
