from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.bridge import run_sync
from realtime.notify import USER_ID_RE
from realtime.publish import PublishError, aerase_inbox


class Command(BaseCommand):
    help = "Erase a user's inbox, inbox preferences and the history of their channel user:<id> (data protection)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user", help="The user id, as in user:<id>.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = options["user"]
        if not USER_ID_RE.fullmatch(user):
            raise CommandError(f"{user!r} is not a user id (1-64 ASCII letters, digits or _ . - @ =)")
        try:
            deleted = run_sync(aerase_inbox, user)
        except PublishError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"erased {deleted} notifications of {user!r} and the history of user:{user}")
