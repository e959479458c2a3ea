from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime.channels import (
    CHANNEL_RE,
    MAX_CHANNEL_LENGTH,
    InvalidChannel,
    group_of,
    namespace_of,
    policy_of,
    validate_channel,
)

GROUP_RE = re.compile(r"^[a-zA-Z\d\-_.]+$")  # what Channels accepts, with len < 100


@pytest.mark.parametrize("name", ["news", "orders.eu", "private:team-7", "user:42", "chat:lobby", "a:b:c", "x@y=z_1"])
def test_valid_names(name: str) -> None:
    assert validate_channel(name) == name


@pytest.mark.parametrize(
    "name",
    ["", " ", "has space", "ünïcode", "a/b", ":lead", "trail:", "news\n", "x" * (MAX_CHANNEL_LENGTH + 1)]
    + [5, None, ["a"]],
)
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidChannel):
        validate_channel(name)


def test_namespaces_and_default_policies() -> None:
    assert namespace_of("news") == "" and namespace_of("user:42") == "user"
    assert policy_of("news").public  # type: ignore[union-attr]
    assert not policy_of("private:x").public  # type: ignore[union-attr]
    assert policy_of("user:1").personal  # type: ignore[union-attr]
    assert policy_of("unknown:x") is None


channel_names = st.from_regex(CHANNEL_RE, fullmatch=True).filter(lambda s: len(s) <= MAX_CHANNEL_LENGTH)


@given(channel_names)
def test_group_names_are_valid_for_channels(name: str) -> None:
    group = group_of(name)
    assert GROUP_RE.match(group) and len(group) < 100


@given(channel_names, channel_names)
def test_group_mapping_is_injective(a: str, b: str) -> None:
    assert (group_of(a) == group_of(b)) == (a == b)


def test_escapes_do_not_collide() -> None:
    names = ["a:b", "a_cb", "a_b", "a__b", "a@b", "a_ab", "x" * 120, "x" * 119 + "y"]
    assert len({group_of(n) for n in names}) == len(names)
