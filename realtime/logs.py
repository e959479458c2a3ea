"""Logging: one JSON object per line (NOTIFIER_LOG_FORMAT=json), and secrets never logged.

Every record passes through `RedactSecrets`, which masks connection tokens (JWTs, `token=`
query values), `Bearer` credentials and API keys, whatever logger wrote the message.
"""

from __future__ import annotations

import json
import logging
import re
import time

_SECRETS = [
    # A server's request line keeps its path, never its query: a token can hide there in any
    # spelling (`?%74oken=%65yJ…`), which the patterns below would not recognize.
    (
        re.compile(r"((?:WebSocket|GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) [^?\s\"']*)\?[^\s\"']*"),
        r"\1?[query redacted]",
    ),
    (re.compile(r"(token=)[^&\s\"']+"), r"\1[redacted]"),
    (re.compile(r"(Bearer\s+)[^\s\"']+", re.IGNORECASE), r"\1[redacted]"),
    (re.compile(r"\bnk_[A-Za-z0-9_\-]{10,}"), "nk_[redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"), "[redacted-jwt]"),
]
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class DropAcceptedSockets(logging.Filter):
    """Uvicorn logs every accepted WebSocket at INFO on its error logger, even with
    --no-access-log ("[accepted]", then the websockets library's "connection open" through the
    same logger): access lines per connection, which cost about 5% of the server's CPU in a
    reconnect storm (issue 17). Refusals and errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        return not (
            isinstance(message, str) and (message == "connection open" or message.endswith('"WebSocket %s" [accepted]'))
        )


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", …extra fields such as "connection"}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)
