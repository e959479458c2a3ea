"""Reading an ASGI scope's headers, for the parts of the service that run before Django."""

from __future__ import annotations

from typing import Any


def header(scope: dict[str, Any], name: bytes) -> str | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
