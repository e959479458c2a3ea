"""The Celery app. Redis is the broker (or CELERY_BROKER_URL's, e.g. RabbitMQ); with no REDIS_URL
tasks run eagerly in-process.

With NOTIFIER_REDIS_SENTINELS, settings.py makes the broker URL kombu's `sentinel://…` list and
puts the master's name in the broker transport options: workers ask the Sentinels for the master.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifier.settings")

app = Celery("notifier")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["worker"])
