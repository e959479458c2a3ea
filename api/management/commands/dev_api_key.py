from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from api.models import ApiKey, hash_key


class Command(BaseCommand):
    help = (
        "For local trials (`make run`): print the API key kept in FILE, creating it when missing "
        "or no longer valid. Production keys come from `create_api_key`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", default=".dev-api-key", help="Where the plaintext key is kept (mode 0600).")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        key = path.read_text().strip() if path.exists() else ""
        if not key or not ApiKey.objects.active().filter(key_hash=hash_key(key)).exists():
            _, key = ApiKey.create_key("make-run")
            path.write_text(key + "\n")
            os.chmod(path, 0o600)
        self.stdout.write(key)
