from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path

from realtime.bridge import run_sync
from realtime.channels import InvalidChannel, validate_channel
from realtime.history import get_history
from realtime.metrics import channel_counts

from .models import SCOPES, ApiKey, hash_key

RECENT_EVENTS = 20


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scopes", "channels", "created_at", "revoked_at", "is_active"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "revoked_at"]
    fields = ["name", "scopes", "channels", "prefix", "created_at", "revoked_at"]
    actions = ["revoke"]

    @admin.display(boolean=True)
    def is_active(self, obj: ApiKey) -> bool:
        return obj.is_active

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            key.revoke()
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        unknown = set(obj.scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}")
        if change:
            return super().save_model(request, obj, form, change)
        # A new key: its plaintext is shown once, here, and only its hash is stored.
        record, key = ApiKey.create_key(obj.name, obj.scopes, obj.channels)
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = record.pk, record.prefix, hash_key(key), record.created_at
        self.message_user(request, f"API key for {obj.name!r}, shown once: {key}", messages.WARNING)

    def get_urls(self) -> list[URLPattern]:
        live = path("channels/", self.admin_site.admin_view(self.channels_view), name="api_apikey_channels")
        return [live, *super().get_urls()]

    def channels_view(self, request: HttpRequest) -> HttpResponse:
        """Channels with subscribers now (all processes), and a channel's recent events."""
        counts = run_sync(channel_counts)
        selected = request.GET.get("channel", "")
        events: list[dict[str, Any]] = []
        if selected:
            try:
                validate_channel(selected)
                page = run_sync(get_history().read, selected, 0, 100_000)
                events = [json.loads(frame) for _, frame in page.frames[-RECENT_EVENTS:]][::-1]
            except InvalidChannel:
                self.message_user(request, f"{selected!r} is not a channel name", messages.ERROR)
        context = {
            **self.admin_site.each_context(request),
            "title": "Live channels",
            "channels": sorted(counts.items(), key=lambda item: (-item[1], item[0])),
            "selected": selected,
            "events": events,
            "opts": self.model._meta,
        }
        return render(request, "admin/api/channels.html", context)
