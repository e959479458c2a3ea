from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from api.models import SCOPES, ApiKey


class Command(BaseCommand):
    help = "Create an API key for publishing. The key is printed once, alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who uses this key, e.g. 'billing-service'.")
        parser.add_argument(
            "--scope",
            action="append",
            choices=SCOPES,
            help="What the key may do; repeat for several (default: publish, read, tokens; `users` acts on inboxes).",
        )
        parser.add_argument(
            "--channels",
            action="append",
            help="A channel pattern the key may use (fnmatch, e.g. 'orders.*'); repeat for several (default: '*').",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        record, key = ApiKey.create_key(options["name"], options["scope"], options["channels"])
        self.stderr.write(f"Created API key {record.name!r} ({record.prefix}…). Store it now; it is not shown again.")
        self.stdout.write(key)
