"""The inbox in the Django admin: browse a user's notifications, and their counts per category.

Read-only: a change made here would skip the user's counters and the `inbox.changed` event that
keeps their open tabs right; changes go through the API (`/api/users/<user>/inbox…`)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse

from .models import InboxCounter, InboxPreference, Notification


class ReadFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("unread", "unread"), ("read", "read"), ("archived", "archived")]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value() == "unread":
            return queryset.filter(read_at__isnull=True, archived_at__isnull=True)
        if self.value() == "read":
            return queryset.filter(read_at__isnull=False, archived_at__isnull=True)
        if self.value() == "archived":
            return queryset.filter(archived_at__isnull=False)
        return queryset


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["user", "event", "category", "created_at", "read_at", "archived_at"]
    list_filter = [ReadFilter, "category"]
    search_fields = ["=user", "=event_id", "event"]
    readonly_fields = ["user", "event_id", "event", "data", "category", "channel", "created_at"]
    ordering = ["-id"]
    show_full_result_count = False  # a COUNT(*) over every user's rows on each page: no

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Notification | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Notification | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """Searching for one user (`=user`) also shows their counts per category."""
        user = request.GET.get("q", "").strip()
        if user:
            rows = (
                Notification.objects.filter(user=user, archived_at__isnull=True)
                .values("category")
                .annotate(total=Count("id"), unread=Count("id", filter=Q(read_at__isnull=True)))
                .order_by("category")
            )
            summary = ", ".join(f"{r['category'] or '(none)'}: {r['total']} ({r['unread']} unread)" for r in rows)
            counter = InboxCounter.objects.filter(user=user).first()
            if summary and counter is not None:
                badge = f"{counter.unread} unread, {counter.unseen} unseen, {counter.total} not archived"
                self.message_user(request, f"{user}'s inbox ({badge}) by category: {summary}", messages.INFO)
        return super().changelist_view(request, extra_context)


@admin.register(InboxPreference)
class InboxPreferenceAdmin(admin.ModelAdmin):
    list_display = ["user", "category", "inbox", "push"]
    search_fields = ["=user"]
