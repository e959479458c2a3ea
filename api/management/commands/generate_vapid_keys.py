from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from realtime import vapid


class Command(BaseCommand):
    help = (
        "Print a new VAPID key pair for Web Push as NAME=value lines for an env file. Set it once and keep "
        "it: browsers subscribed with the public key, and a new key makes every subscription useless."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        key = vapid.generate_private_key()
        self.stdout.write(f"NOTIFIER_VAPID_PRIVATE_KEY={key}")
        self.stdout.write("NOTIFIER_VAPID_SUBJECT=mailto:you@example.com")
        self.stdout.write(f"# public key (GET /api/push/key answers it): {vapid.public_key_of(key)}")
