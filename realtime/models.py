"""What outlives a connection: each user's stored notifications (the inbox, DESIGN §10), and
their browsers' push subscriptions with each push's delivery, and webhook endpoints with each
webhook's delivery (DESIGN §11)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

MAX_USER_ID_LENGTH = 64
MAX_CATEGORY_LENGTH = 64


class Notification(models.Model):
    """One event stored for one user, with its read state. `event_id` is the event's id: one
    event sent to several users is one row per user."""

    user = models.CharField(max_length=MAX_USER_ID_LENGTH)
    event_id = models.CharField(max_length=32)
    event = models.CharField(max_length=128)
    data = models.JSONField(null=True, blank=True)
    # null: no category, as the API answers it (not "", which is not a valid category).
    category = models.CharField(max_length=MAX_CATEGORY_LENGTH, null=True, blank=True)  # noqa: DJ001
    channel = models.CharField(max_length=128)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)
    seen_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "event_id"], name="inbox_one_per_user_and_event")]
        indexes = [
            # A user's inbox, newest first, and its cursor (the row id): one index range scan.
            models.Index(fields=["user", "-id"], name="inbox_newest_first"),
            # No index holds read_at, seen_at or archived_at, so a mark rewrites no index entry: the
            # counts are InboxCounter's, and a filtered page reads at most one user's rows.
            models.Index(fields=["created_at"], name="inbox_by_age"),  # retention by age
        ]

    def __str__(self) -> str:
        return f"{self.user}: {self.event} ({self.event_id})"


class InboxCounter(models.Model):
    """A user's counts, kept by every change of their notifications in the same transaction
    (realtime/inbox.py), so reading the badge counts no rows. Its row is also the user's lock:
    every change takes it before it reads or changes the user's rows, so changes of one user's
    inbox run one at a time."""

    user = models.CharField(max_length=MAX_USER_ID_LENGTH, primary_key=True)
    unread = models.IntegerField(default=0)  # not read, not archived
    unseen = models.IntegerField(default=0)  # not seen, not archived
    total = models.IntegerField(default=0)  # not archived
    stored = models.IntegerField(default=0)  # every row, archived too: what retention limits

    def __str__(self) -> str:
        return f"{self.user}: {self.unread} unread of {self.total}"


class InboxPreference(models.Model):
    """A user's choice for one category: stored in the inbox, sent by Web Push."""

    user = models.CharField(max_length=MAX_USER_ID_LENGTH)
    category = models.CharField(max_length=MAX_CATEGORY_LENGTH)
    inbox = models.BooleanField(default=True)
    push = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "category"], name="inbox_preference_per_category")]

    def __str__(self) -> str:
        return f"{self.user}/{self.category}: inbox={self.inbox} push={self.push}"


class PushSubscription(models.Model):
    """A browser's Web Push subscription (`PushSubscription.toJSON()`), for one user. The
    endpoint is the push service's URL for that browser: unique, since one browser is one user
    at a time (registering it again moves it to whoever registered it last)."""

    user = models.CharField(max_length=MAX_USER_ID_LENGTH, db_index=True)
    endpoint = models.CharField(max_length=2048, unique=True)
    p256dh = models.CharField(max_length=128)  # the browser's ECDH public key, base64url
    auth = models.CharField(max_length=64)  # the shared auth secret, base64url
    expires_at = models.DateTimeField(null=True, blank=True)  # `expirationTime`, if the browser gave one
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.user}: {self.endpoint[:60]}"


class PushDelivery(models.Model):
    """One push of one event to one subscription, and where it stands. Unique per (event,
    subscription): however often the task runs (retries, a restarted worker), it is sent once.
    A worker takes it by moving it to `sending` with a lease; one that dies mid-send leaves
    the lease to run out, and the push is tried again."""

    PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
    STATUSES = [(s, s) for s in (PENDING, SENDING, SENT, FAILED)]

    event_id = models.CharField(max_length=64)
    subscription = models.ForeignKey(PushSubscription, on_delete=models.CASCADE, related_name="deliveries")
    user = models.CharField(max_length=MAX_USER_ID_LENGTH)
    payload = models.JSONField()  # what the browser decrypts (DESIGN §11)
    ttl = models.PositiveIntegerField()  # seconds the push service may keep it; also how long we retry
    urgency = models.CharField(max_length=16, blank=True)
    status = models.CharField(max_length=16, choices=STATUSES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True)
    give_up_at = models.DateTimeField()
    last_status = models.PositiveIntegerField(null=True, blank=True)  # the push service's last HTTP status
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "push deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event_id", "subscription"], name="push_once_per_event_and_subscription")
        ]
        indexes = [
            # What is due: the sweep that picks up pushes whose task was lost.
            models.Index(fields=["status", "next_attempt_at"], name="push_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} -> {self.subscription_id} ({self.status})"


class WebhookEndpoint(models.Model):
    """A backend URL that gets the service's own events (DESIGN §11), signed with `secret`
    (Standard Webhooks). Disabled once it has failed for WEBHOOK_DISABLE_AFTER_SECS."""

    url = models.CharField(max_length=2048)
    events = models.JSONField()  # the event types it gets
    secret = models.CharField(max_length=100)  # "whsec_" + base64 of 24 random bytes
    created_at = models.DateTimeField(default=timezone.now)
    failing_since = models.DateTimeField(null=True, blank=True)  # the first failure since the last success
    disabled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.url} ({', '.join(self.events)})"


class WebhookDelivery(models.Model):
    """One event to one endpoint, and where it stands. `message_id` is the `webhook-id` header:
    the same on every attempt, so a receiver can drop a repeat (at-least-once delivery)."""

    PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"
    STATUSES = [(s, s) for s in (PENDING, SENDING, DELIVERED, FAILED)]

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    message_id = models.CharField(max_length=64, unique=True)
    type = models.CharField(max_length=64)
    payload = models.JSONField()  # the body: {"type", "timestamp", "data"}
    status = models.CharField(max_length=16, choices=STATUSES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True)
    give_up_at = models.DateTimeField()
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_due")]

    def __str__(self) -> str:
        return f"{self.type} {self.message_id} -> {self.endpoint_id} ({self.status})"


class ScheduledEvent(models.Model):
    """An event published later (DESIGN §12): at `deliver_at`, or at the end of a digest's
    window, as one event collecting the publishes with its key and target. A dispatcher takes
    due rows (`SELECT … FOR UPDATE SKIP LOCKED`) with a lease, and publishes each with its
    `event_id` as idempotency key, so a dispatcher killed at any moment loses and repeats none."""

    PENDING, SENDING, DELIVERED, CANCELLED, FAILED = "pending", "sending", "delivered", "cancelled", "failed"
    STATUSES = [(s, s) for s in (PENDING, SENDING, DELIVERED, CANCELLED, FAILED)]

    event_id = models.CharField(max_length=64, unique=True)  # the published event's id, answered at once
    publisher = models.CharField(max_length=64)  # "key:<id>" or "celery"
    idempotency_key = models.CharField(max_length=128, blank=True)  # "": none
    channels = models.JSONField()  # the targets, checked when it was scheduled
    event = models.CharField(max_length=128)
    data = models.JSONField(null=True, blank=True)  # a digest's: the items, up to digest_max
    options = models.JSONField(default=dict)  # inbox, category, push: as the publish asked
    deliver_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=STATUSES, default=PENDING)
    next_attempt_at = models.DateTimeField()  # deliver_at, later after a failed attempt
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # A digest: its key and its one target channel, how many publishes it collected (its items
    # are the first `digest_max` of their data) and when the first and the last came.
    digest_key = models.CharField(max_length=128, blank=True)  # "": not a digest
    digest_channel = models.CharField(max_length=200, blank=True)
    digest_open = models.BooleanField(default=False)  # collecting: until a dispatcher takes it
    digest_max = models.PositiveSmallIntegerField(null=True, blank=True)
    count = models.PositiveIntegerField(default=1)
    first_at = models.DateTimeField(null=True, blank=True)
    last_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["publisher", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="scheduled_once_per_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["digest_key", "digest_channel"],
                condition=models.Q(digest_open=True),
                name="one_open_digest_per_key_and_channel",
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="scheduled_due")]

    def __str__(self) -> str:
        return f"{self.event} at {self.deliver_at:%Y-%m-%d %H:%M:%S} ({self.status})"
