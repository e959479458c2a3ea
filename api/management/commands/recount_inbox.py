from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from realtime import inbox


class Command(BaseCommand):
    help = (
        "Set users' inbox counts (the badge) from their stored notifications. Needed only after rows were "
        "written around notifier (a bulk load, a restore, SQL by hand); the API keeps the counts itself."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("users", nargs="*", help="the users to recount (default: every user)")

    def handle(self, *args: Any, **options: Any) -> None:
        counted = inbox.recount(options["users"] or None)
        self.stdout.write(f"recounted the inbox of {counted} users")
