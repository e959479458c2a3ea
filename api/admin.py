from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scopes", "channels", "created_at", "revoked_at", "is_active"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "revoked_at"]
    fields = ["name", "prefix", "scopes", "channels", "created_at", "revoked_at"]
    actions = ["revoke"]

    @admin.display(boolean=True)
    def is_active(self, obj: ApiKey) -> bool:
        return obj.is_active

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            key.revoke()
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # The plaintext key is shown once; the admin cannot show it, so keys are created with
        # `manage.py create_api_key NAME`.
        return False
