"""The inbox, Web Push, webhooks and scheduled events in the Django admin: a user's notifications and
their counts per category; browsers' push subscriptions and each push's attempts; webhook endpoints
and deliveries; scheduled events and digests, which can be cancelled.

Read-only (the inbox): a change made here would skip the user's counters and the `inbox.changed` event that
keeps their open tabs right; changes go through the API (`/api/users/<user>/inbox…`)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse

from . import scheduling, webhooks
from .models import (
    InboxCounter,
    InboxPreference,
    Notification,
    PushDelivery,
    PushSubscription,
    ScheduledEvent,
    WebhookDelivery,
    WebhookEndpoint,
)


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


class DeliveryInline(admin.TabularInline):
    """A subscription's recent pushes, newest first."""

    model = PushDelivery
    fields = ("event_id", "status", "attempts", "last_status", "last_error", "created_at", "sent_at")
    readonly_fields = fields
    ordering = ["-id"]
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> Any:
        recent = super().get_queryset(request).order_by("-id").values_list("id", flat=True)[:20]
        return super().get_queryset(request).filter(id__in=list(recent))


@admin.register(PushSubscription)
class PushSubscriptionAdmin(admin.ModelAdmin):
    """Browsers' push subscriptions; deleting one here stops its pushes (the browser may
    subscribe again)."""

    list_display = ["user", "endpoint_origin", "created_at", "expires_at"]
    search_fields = ["=user"]
    readonly_fields = ["user", "endpoint", "p256dh", "auth", "expires_at", "created_at"]
    inlines = [DeliveryInline]
    ordering = ["-id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PushSubscription | None = None) -> bool:
        return False

    @admin.display(description="push service")
    def endpoint_origin(self, obj: PushSubscription) -> str:
        return "/".join(obj.endpoint.split("/", 3)[:3])


@admin.register(PushDelivery)
class PushDeliveryAdmin(admin.ModelAdmin):
    """Every push attempt's outcome; read-only (the worker owns the state)."""

    list_display = ["event_id", "user", "status", "attempts", "last_status", "next_attempt_at", "sent_at"]
    list_filter = ["status"]
    search_fields = ["=user", "=event_id"]
    readonly_fields = [f.name for f in PushDelivery._meta.fields]
    ordering = ["-id"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PushDelivery | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: PushDelivery | None = None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Backends' webhook endpoints; a disabled one (it failed for 24 h) is enabled again by
    rotating its secret over the API, or by clearing "disabled at" here."""

    list_display = ["url", "event_types", "created_at", "failing_since", "disabled_at"]
    list_filter = [("disabled_at", admin.EmptyFieldListFilter)]
    fields = ["url", "events", "created_at", "failing_since", "disabled_at"]
    readonly_fields = ["created_at", "failing_since"]  # the secret is never shown again

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created over the API, which shows the secret once

    @admin.display(description="events")
    def event_types(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Every webhook's attempts; select some and "Redeliver" sends them again (same webhook-id)."""

    list_display = ["message_id", "type", "endpoint", "status", "attempts", "last_status", "created_at", "delivered_at"]
    list_filter = ["status", "type"]
    search_fields = ["=message_id"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["redeliver"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    @admin.action(description="Redeliver (same webhook-id)")
    def redeliver(self, request: HttpRequest, queryset: Any) -> None:
        sent = sum(webhooks.redeliver(pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"{sent} queued again", messages.INFO)


@admin.register(ScheduledEvent)
class ScheduledEventAdmin(admin.ModelAdmin):
    """Events waiting for their time and digests collecting; "Cancel" stops those not yet taken."""

    list_display = ["event_id", "event", "deliver_at", "status", "digest_key", "count", "attempts", "delivered_at"]
    list_filter = ["status"]
    search_fields = ["=event_id", "=digest_key", "=publisher"]
    readonly_fields = [f.name for f in ScheduledEvent._meta.fields]
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["cancel"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ScheduledEvent | None = None) -> bool:
        return False

    @admin.action(description="Cancel (not yet taken for delivery)")
    def cancel(self, request: HttpRequest, queryset: Any) -> None:
        cancelled = scheduling.cancel_rows(queryset)
        self.message_user(request, f"{cancelled} cancelled", messages.INFO)
