"""What outlives a connection: each user's stored notifications (the inbox, DESIGN §10)."""

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
