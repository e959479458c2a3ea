"""OpenAPI description of the API-key authentication (drf-spectacular extension)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <api key>"}


class ConnectionTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.inbox.ConnectionTokenAuthentication"
    name = "ConnectionToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer <connection token> (the user's)",
        }


class DjangoSessionScheme(OpenApiAuthenticationExtension):
    target_class = "api.inbox.DjangoSessionAuthentication"
    name = "DjangoSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
