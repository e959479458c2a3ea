"""A task that does nothing, for `bench/run.py --only celery`: loaded into notifier's own worker
(`celery -A notifier worker --include bench.noop_task`), it measures what Celery's transport and
pool cost on that worker, so the notify task's rate can be read as a ratio of it."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="bench.noop", ignore_result=True)
def noop() -> None:
    """Nothing: the task's whole cost is Celery's."""
