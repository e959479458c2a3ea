"""realtime.conf: every default written once, and NOTIFIER_<NAME> variables mapped onto them."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from realtime.conf import DEFAULTS, NOT_FROM_ENVIRONMENT, environment_overrides, gc_thresholds


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


def test_gc_thresholds_are_up_to_three_positive_integers_or_pythons_own() -> None:
    assert gc_thresholds(DEFAULTS["GC_THRESHOLDS"]) == (50_000, 20, 100)
    assert gc_thresholds("python") == gc_thresholds("") == ()
    assert gc_thresholds(" 2000 ") == (2000,)
    for bad in ("0", "1,2,3,4", "many", "700,-1"):
        with pytest.raises(ImproperlyConfigured, match="NOTIFIER_GC_THRESHOLDS"):
            gc_thresholds(bad)


def test_the_server_application_sets_the_gc_thresholds() -> None:
    import gc

    import notifier.asgi  # noqa: F401 - importing it is what a server process does

    assert gc.get_threshold() == gc_thresholds(DEFAULTS["GC_THRESHOLDS"])
