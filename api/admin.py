from __future__ import annotations

import json
import logging
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.cache import add_never_cache_headers
from redis.exceptions import RedisError

from realtime.bridge import run_sync
from realtime.channels import InvalidChannel, validate_channel
from realtime.history import get_history
from realtime.metrics import channel_counts

from .models import SCOPES, ApiKey, hash_key

logger = logging.getLogger(__name__)

RECENT_EVENTS = 20
POLL_MILLISECONDS = 2000
_NEW_KEY = "_notifier_plaintext_key"  # set on the object by save_model, read by response_add


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name", "scopes", "channels"]

    def clean_scopes(self) -> list[str]:
        scopes = self.cleaned_data["scopes"]
        if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
            raise forms.ValidationError(f'A JSON list of scopes, e.g. ["publish"]; any of {", ".join(SCOPES)}.')
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise forms.ValidationError(f"Unknown scopes {unknown}; choose from {', '.join(SCOPES)}.")
        return scopes

    def clean_channels(self) -> list[str]:
        channels = self.cleaned_data["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, str) and c for c in channels):
            raise forms.ValidationError('A JSON list of channel patterns, e.g. ["orders.*"]; ["*"] for all.')
        return channels


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
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
        if change:
            return super().save_model(request, obj, form, change)
        # A new key: only its hash is stored; response_add shows the plaintext once.
        record, key = ApiKey.create_key(obj.name, obj.scopes, obj.channels)
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = record.pk, record.prefix, hash_key(key), record.created_at
        setattr(obj, _NEW_KEY, key)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        """The new key, in this response's body only.

        Not a message: Django's default message storage may keep a message in a cookie, and a
        redirect would carry the key through the browser's cookie jar (and any log of it)."""
        key = getattr(obj, _NEW_KEY, None)
        if key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "opts": self.model._meta,
            "original": obj,
            "key": key,
            "change_url": reverse("admin:api_apikey_change", args=[obj.pk]),
            "list_url": reverse("admin:api_apikey_changelist"),
        }
        response = TemplateResponse(request, "admin/api/apikey/created.html", context)
        add_never_cache_headers(response)  # no cached copy of the key
        response["Cache-Control"] += ", no-store"
        return response

    def get_urls(self) -> list[URLPattern]:
        live = path("channels/", self.admin_site.admin_view(self.channels_view), name="api_apikey_channels")
        data = path(
            "channels/data/", self.admin_site.admin_view(self.channels_data_view), name="api_apikey_channels_data"
        )
        return [live, data, *super().get_urls()]

    def channels_view(self, request: HttpRequest) -> HttpResponse:
        """Channels with subscribers now (all processes), and a channel's recent events; the
        page polls channels_data_view every 2 s and updates itself in place."""
        selected = request.GET.get("channel", "")
        context = {
            **self.admin_site.each_context(request),
            "title": "Live channels",
            "selected": selected,
            "live": live_data(selected),
            "poll_ms": POLL_MILLISECONDS,
            "opts": self.model._meta,
        }
        return render(request, "admin/api/channels.html", context)

    def channels_data_view(self, request: HttpRequest) -> JsonResponse:
        """What channels_view shows, as JSON (staff only, like every admin view)."""
        response = JsonResponse(live_data(request.GET.get("channel", "")))
        add_never_cache_headers(response)
        return response


def live_data(selected: str) -> dict[str, Any]:
    """Subscriber counts and the selected channel's last RECENT_EVENTS events, newest first.
    A Redis failure is reported in `error`, not raised."""
    data: dict[str, Any] = {"channels": [], "selected": selected, "events": [], "error": None}
    try:
        counts = run_sync(channel_counts)
        data["channels"] = [[name, count] for name, count in sorted(counts.items(), key=lambda i: (-i[1], i[0]))]
        if selected:
            validate_channel(selected)
            data["events"] = [_event_row(frame) for frame in run_sync(_recent_frames, selected)][::-1]
    except InvalidChannel:
        data["error"] = f"{selected!r} is not a channel name"
    except (RedisError, OSError) as exc:
        logger.warning("admin live channels: %s", exc)
        data["error"] = f"Redis is unavailable: {type(exc).__name__}: {exc}"
    return data


async def _recent_frames(channel: str) -> list[str]:
    """The channel's last RECENT_EVENTS frames, oldest first (two short reads, not all history)."""
    history = get_history()
    (position,) = await history.positions([channel])
    page = await history.read(channel, max(0, position.offset - RECENT_EVENTS), RECENT_EVENTS)
    return [frame for _, frame in page.frames[-RECENT_EVENTS:]]


def _event_row(frame: str) -> dict[str, Any]:
    event = json.loads(frame)
    return {
        "offset": event.get("offset"),
        "event": event.get("event"),
        "data": json.dumps(event.get("data")),
        "ts": event.get("ts"),
    }
