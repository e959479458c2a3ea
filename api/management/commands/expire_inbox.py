from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from realtime import inbox
from realtime.conf import notifier_settings


class Command(BaseCommand):
    help = (
        "Delete stored notifications older than NOTIFIER_INBOX_TTL_DAYS. Publishing does it for the users it "
        "stores for; run this daily (cron, systemd timer) for the others."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        deleted = inbox.expire()
        self.stdout.write(f"deleted {deleted} notifications older than {notifier_settings.INBOX_TTL_DAYS} days")
