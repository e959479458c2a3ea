"""realtime.conf: every default written once, and NOTIFIER_<NAME> variables mapped onto them."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from realtime.conf import DEFAULTS, NOT_FROM_ENVIRONMENT, environment_overrides


def test_every_setting_but_the_built_ones_is_read_from_its_variable() -> None:
    samples = {bool: "off", int: "7", float: "0.25", list: "a, b,,c", dict: '{"x": {"public": false}}', str: "text"}
    environ = {
        f"NOTIFIER_{name}": samples[type(default)]
        for name, default in DEFAULTS.items()
        if name not in NOT_FROM_ENVIRONMENT
    }
    overrides = environment_overrides(environ)
    assert set(overrides) == set(DEFAULTS) - NOT_FROM_ENVIRONMENT
    assert overrides["ALLOW_ANONYMOUS"] is False
    assert overrides["HEARTBEAT_SECS"] == 7
    assert overrides["DISPATCH_SECS"] == 0.25
    assert overrides["ALLOWED_ORIGINS"] == ["a", "b", "c"]
    assert overrides["PUBLISH_RATE_PER_KEY"] == "text"


def test_empty_variables_keep_the_default_and_bad_ones_name_themselves() -> None:
    assert environment_overrides({"NOTIFIER_HISTORY_SIZE": " ", "NOTIFIER_REDIS_URL": "redis://x"}) == {}
    with pytest.raises(ImproperlyConfigured, match="NOTIFIER_HISTORY_SIZE='many' is not an integer"):
        environment_overrides({"NOTIFIER_HISTORY_SIZE": "many"})
    with pytest.raises(ImproperlyConfigured, match="NOTIFIER_ALLOW_ANONYMOUS='maybe' is not a boolean"):
        environment_overrides({"NOTIFIER_ALLOW_ANONYMOUS": "maybe"})
