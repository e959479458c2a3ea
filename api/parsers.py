"""DRF's JSON parser, with a body nested thousands deep refused as a parse error (400), not a 500."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, parsers


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:  # json.loads on `[[[[…`; DRF catches only ValueError
            raise exceptions.ParseError("JSON parse error - nested too deeply") from None
