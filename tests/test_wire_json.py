"""The one JSON encoding of the wire (`realtime.events.dumps`): built once, it must write
exactly what `json.dumps` with the same options writes, and refuse what that refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from realtime.events import dumps
from realtime.publish import InvalidPublish, encode_data

VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**80),
    1.5,
    -0.0,
    1e300,
    "",
    'quote " backslash \\ newline \n tab \t nul \x00 é 雪 😀',
    [],
    {},
    [1, [2, [3, {"a": (4, 5)}]]],
    {"s": 1, "nested": {"list": [None, False, "x"]}, 2: "int key", 1.5: "float key", None: "none key"},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_writes_what_json_dumps_writes(value: Any) -> None:
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def test_str_subclasses_are_strings() -> None:
    class Name(str):
        pass

    assert dumps(Name("a")) == '"a"'
    assert dumps({Name("k"): Name("v")}) == '{"k":"v"}'


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [float("-inf")]])
def test_refuses_what_json_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        dumps(value)
    with pytest.raises(InvalidPublish, match="not JSON-serializable"):
        encode_data(value)


def test_refuses_objects_and_cycles() -> None:
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        dumps({"a": object()})
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(RecursionError):
        dumps(cycle)
    with pytest.raises(InvalidPublish, match="nested too deeply"):
        encode_data(cycle)
