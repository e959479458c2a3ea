"""The Celery task in eager mode (the embedded default); real workers are in test_celery.py."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry
from channels.layers import channel_layers

from realtime.publish import Unavailable
from worker import tasks


@pytest.fixture(autouse=True)
def fresh_layer() -> None:
    channel_layers.backends.pop("default", None)


def test_notify_returns_the_notify_answer() -> None:
    result = tasks.notify.delay(channel="task.a", event="e", data={"k": 1}).get()
    assert set(result) == {"id", "channels"} and result["channels"]["task.a"]["offset"] >= 1


def test_invalid_kwargs_fail_without_retry() -> None:
    with pytest.raises(tasks.InvalidNotification):
        tasks.notify.delay(channel="bad channel", event="e").get()
    with pytest.raises(tasks.InvalidNotification):
        tasks.notify.delay(channel="a", event="e", data="x" * 70_000).get()
    with pytest.raises(tasks.InvalidNotification):
        tasks.notify.delay(channel="a", event="e", unknown_field=1).get()


def test_redis_errors_are_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    retried: list[dict[str, Any]] = []

    def failing_publish(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("down")

    def record_retry(**kwargs: Any) -> Any:
        retried.append(kwargs)
        raise Retry(exc=kwargs.get("exc"))

    monkeypatch.setattr(tasks, "publish", failing_publish)
    monkeypatch.setattr(tasks.notify, "retry", record_retry)
    result = tasks.notify.apply(kwargs={"channel": "a", "event": "e"}, retries=3, throw=False)
    assert result.state == "RETRY"
    (call,) = retried
    assert isinstance(call["exc"], Unavailable) and 0 <= call["countdown"] <= 8  # 2**3 s with full jitter


def test_invalid_kwargs_are_not_retried() -> None:
    result = tasks.notify.apply(kwargs={"channel": "bad channel", "event": "e"}, retries=0, throw=False)
    assert result.state == "FAILURE" and isinstance(result.result, tasks.InvalidNotification)


def test_an_event_stored_but_not_sent_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """History has it and the hubs deliver it; a retry (no idempotency key) would be a second copy."""
    from realtime.history import Position
    from realtime.publish import PublishResult, StoredNotSent

    stored = PublishResult("abc", {"a": Position(7, "e1")})

    def half_failing_publish(*args: Any, **kwargs: Any) -> Any:
        raise StoredNotSent(stored)

    monkeypatch.setattr(tasks, "publish", half_failing_publish)
    result = tasks.notify.apply(kwargs={"channel": "a", "event": "e"}, throw=False)
    assert result.state == "SUCCESS" and result.result == stored.as_dict()
