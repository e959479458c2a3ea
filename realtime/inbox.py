"""The inbox's rows (DESIGN §10): store an event for its users, list, count, mark, delete.

Everything here is database work, run in Django's thread for sync code (`sync_to_async`), one
transaction per call. Publishing the `inbox.changed` event that follows each change is
realtime/publish.py's (`apublish` stores rows with the event it publishes;
`apublish_inbox_change` after a mark or delete), so this module imports nothing that publishes.

Lists are newest first by row id, the cursor being the last id seen: rows added while a client
pages have higher ids, so paging has no duplicate and no gap. Counts exclude archived rows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, transaction
from django.db.models import Case, Count, Q, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from .conf import notifier_settings
from .models import InboxPreference, Notification

P = ParamSpec("P")
T = TypeVar("T")

STATUSES = ("unread", "read", "archived", "all")  # and None: everything not archived
MARKS = ("read", "unread", "seen", "archived", "unarchived")
MARKS_FOR_ALL = ("read", "seen", "archived")
MAX_PAGE = 100


class BadCursor(ValueError):
    """A cursor this module did not hand out."""


@dataclass(frozen=True)
class Row:
    """One notification to store: `user`'s copy of event `event_id`."""

    user: str
    event_id: str
    event: str
    data: Any
    category: str | None
    channel: str


@dataclass(frozen=True)
class Page:
    notifications: list[dict[str, Any]]
    next: str | None
    counts: dict[str, int]


def as_json(row: Notification) -> dict[str, Any]:
    """A notification as the API answers it (DESIGN §10)."""
    return {
        "id": row.event_id,
        "event": row.event,
        "data": row.data,
        "category": row.category,
        "channel": row.channel,
        "created_at": _time(row.created_at),
        "read_at": _time(row.read_at),
        "seen_at": _time(row.seen_at),
        "archived_at": _time(row.archived_at),
    }


def counts_of(users: Iterable[str]) -> dict[str, dict[str, int]]:
    """Each user's `unread`, `unseen` and `total` (not archived): one query for all of them."""
    return _counts(users, with_archived=False)


def _counts(users: Iterable[str], with_archived: bool) -> dict[str, dict[str, int]]:
    """`counts_of`; `with_archived` adds `stored`, every row of the user's, archived ones
    included (what the retention limit counts), so archived rows are read too."""
    wanted = list(dict.fromkeys(users))
    not_archived = Q(archived_at__isnull=True)
    rows = Notification.objects.filter(user__in=wanted)
    if not with_archived:
        rows = rows.filter(not_archived)
    extra = {"stored": Count("id")} if with_archived else {}
    found = {
        row.pop("user"): row
        for row in rows.values("user")
        .annotate(
            unread=Count("id", filter=not_archived & Q(read_at__isnull=True)),
            unseen=Count("id", filter=not_archived & Q(seen_at__isnull=True)),
            total=Count("id", filter=not_archived),
            **extra,
        )
        .order_by()
    }
    zero = {"unread": 0, "unseen": 0, "total": 0, **({"stored": 0} if with_archived else {})}
    return {user: found.get(user, zero) for user in wanted}


@dataclass(frozen=True)
class Stored:
    rows: list[Row]  # those stored: not those of a category their user muted
    counts: dict[str, dict[str, int]]  # each of their users' new counts


def store(rows: Sequence[Row]) -> Stored:
    """Store `rows` in one transaction, except those of a category their user muted (a row
    already stored is kept as it is), apply the retention limits to their users, and return
    what was stored with the users' new counts."""
    with transaction.atomic():
        rows = _not_muted(rows)
        Notification.objects.bulk_create(
            [
                Notification(
                    user=r.user,
                    event_id=r.event_id,
                    event=r.event,
                    data=r.data,
                    category=r.category,
                    channel=r.channel,
                )
                for r in rows
            ],
            ignore_conflicts=True,
        )
        users = list(dict.fromkeys(r.user for r in rows))
        counts = _retain(users)
        return Stored(rows, {user: counts[user] for user in users})


def _not_muted(rows: Sequence[Row]) -> list[Row]:
    categorized = [r for r in rows if r.category is not None]
    if not categorized:
        return list(rows)
    muted = set(
        InboxPreference.objects.filter(
            user__in={r.user for r in categorized}, category__in={r.category for r in categorized}, inbox=False
        ).values_list("user", "category")
    )
    return [r for r in rows if (r.user, r.category) not in muted]


def _retain(users: list[str]) -> dict[str, dict[str, int]]:
    """Apply NOTIFIER_INBOX_TTL_DAYS and NOTIFIER_INBOX_MAX_PER_USER to `users` (only theirs:
    no full-table scan on the publish path) and return their counts. Over the limit, the oldest
    read or archived rows go first, then the oldest unread."""
    cutoff = timezone.now() - timedelta(days=notifier_settings.INBOX_TTL_DAYS)
    Notification.objects.filter(user__in=users, created_at__lt=cutoff).delete()
    counts = _counts(users, with_archived=True)
    limit = notifier_settings.INBOX_MAX_PER_USER
    over = {user: c["stored"] - limit for user, c in counts.items() if c["stored"] > limit}
    for user, excess in over.items():
        done = Q(read_at__isnull=False) | Q(archived_at__isnull=False)
        oldest = (
            Notification.objects.filter(user=user)
            .order_by(Case(When(done, then=0), default=1), "id")
            .values_list("id", flat=True)[:excess]
        )
        Notification.objects.filter(id__in=list(oldest)).delete()
    if over:
        counts.update(_counts(over, with_archived=True))
    return {user: {k: v for k, v in c.items() if k != "stored"} for user, c in counts.items()}


def forget(rows: Sequence[Row]) -> None:
    """Take back rows whose event could not be published (nothing announced them)."""
    by_event: dict[str, list[str]] = {}
    for r in rows:
        by_event.setdefault(r.event_id, []).append(r.user)
    with transaction.atomic():
        for event_id, users in by_event.items():
            Notification.objects.filter(event_id=event_id, user__in=users).delete()


def expire() -> int:
    """Delete every notification older than NOTIFIER_INBOX_TTL_DAYS (an index range scan); the
    publish path does it only for the users it stores for (`manage.py expire_inbox`)."""
    cutoff = timezone.now() - timedelta(days=notifier_settings.INBOX_TTL_DAYS)
    deleted, _ = Notification.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def erase(user: str) -> int:
    """Delete every notification and preference of `user` (a data-protection request)."""
    with transaction.atomic():
        InboxPreference.objects.filter(user=user).delete()
        deleted, _ = Notification.objects.filter(user=user).delete()
        return deleted


def preferences(user: str) -> dict[str, dict[str, bool]]:
    return {
        p.category: {"inbox": p.inbox, "push": p.push}
        for p in InboxPreference.objects.filter(user=user).order_by("category")
    }


def set_preferences(user: str, categories: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
    """Replace `user`'s preferences: categories not given are back to the default (both on)."""
    with transaction.atomic():
        InboxPreference.objects.filter(user=user).exclude(category__in=list(categories)).delete()
        for category, choice in categories.items():
            InboxPreference.objects.update_or_create(
                user=user,
                category=category,
                defaults={"inbox": choice.get("inbox", True), "push": choice.get("push", True)},
            )
    return preferences(user)


def page(user: str, status: str | None, category: str | None, limit: int, before: int | None) -> Page:
    """One page of `user`'s notifications, newest first (those before row `before`, the
    decoded cursor), and the user's counts."""
    rows = _filtered(Notification.objects.filter(user=user), status, category)
    if before is not None:
        rows = rows.filter(id__lt=before)
    found = list(rows.order_by("-id")[: limit + 1])
    more = len(found) > limit
    found = found[:limit]
    return Page(
        [as_json(r) for r in found],
        encode_cursor(found[-1].id) if more else None,
        counts_of([user])[user],
    )


def mark(
    user: str, mark_as: str, ids: Sequence[str] | None = None, category: str | None = None
) -> tuple[int, dict[str, int]]:
    """Mark `ids` (None: all, optionally of one category) of `user`'s notifications; the number
    changed and the new counts. Other users' ids are not touched, and not told apart."""
    at = timezone.now()
    rows = Notification.objects.filter(user=user)
    if ids is not None:
        rows = rows.filter(event_id__in=list(ids))
    elif category is not None:
        rows = rows.filter(category=category)
    with transaction.atomic():
        if mark_as == "read":  # read implies seen: one statement sets both
            updated = rows.filter(read_at__isnull=True).update(read_at=at, seen_at=Coalesce("seen_at", Value(at)))
        elif mark_as == "unread":
            updated = rows.filter(read_at__isnull=False).update(read_at=None)
        elif mark_as == "seen":
            updated = rows.filter(seen_at__isnull=True).update(seen_at=at)
        elif mark_as == "archived":
            updated = rows.filter(archived_at__isnull=True).update(archived_at=at)
        elif mark_as == "unarchived":
            updated = rows.filter(archived_at__isnull=False).update(archived_at=None)
        else:
            raise ValueError(f"unknown mark {mark_as!r}")
        return updated, counts_of([user])[user]


def delete(user: str, event_id: str) -> dict[str, int] | None:
    """Delete one of `user`'s notifications: the new counts, or None when there is no such one."""
    with transaction.atomic():
        deleted, _ = Notification.objects.filter(user=user, event_id=event_id).delete()
        return counts_of([user])[user] if deleted else None


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"n{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("n") or not text[1:].isdigit() or len(text) > 21:
            raise ValueError(text)
        return int(text[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("not a cursor this endpoint returned") from None


def _filtered(rows: QuerySet[Notification], status: str | None, category: str | None) -> QuerySet[Notification]:
    if status is None:
        rows = rows.filter(archived_at__isnull=True)
    elif status == "unread":
        rows = rows.filter(archived_at__isnull=True, read_at__isnull=True)
    elif status == "read":
        rows = rows.filter(archived_at__isnull=True, read_at__isnull=False)
    elif status == "archived":
        rows = rows.filter(archived_at__isnull=False)
    if category is not None:
        rows = rows.filter(category=category)
    return rows


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _in_database_thread(func: Callable[P, T], thread_sensitive: bool = True) -> Callable[P, Awaitable[T]]:
    """`func` from async code, with Django's handling of stale connections around it (as a
    request gets it), so CONN_MAX_AGE applies there too: in Django's one thread for sync code,
    or (`thread_sensitive=False`, for reads) in any thread of the pool, each with its own
    connection."""

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(run, thread_sensitive=thread_sensitive)


_store_in_thread = _in_database_thread(store)


class _GroupCommit:
    """Stores that arrive while one is being written wait, and are then written together, in
    one transaction: concurrent publishes share a commit instead of queueing one by one for
    Django's one thread for sync code."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Sequence[Row], asyncio.Future[Stored]]] = []
        self._writing = False

    async def store(self, rows: Sequence[Row]) -> Stored:
        done: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, done))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._write())
        return await done

    async def _write(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    stored = await _store_in_thread([row for rows, _ in group for row in rows])
                except BaseException as exc:  # each waiting publish gets the error
                    cancelled = not isinstance(exc, Exception)  # the loop is closing: stop, fail the rest
                    failed, self._waiting = (group + self._waiting, []) if cancelled else (group, self._waiting)
                    for _, done in failed:
                        if not done.done():
                            done.set_exception(exc)
                    if cancelled:
                        raise
                    continue
                kept = {(row.user, row.event_id) for row in stored.rows}
                for rows, done in group:
                    mine = [row for row in rows if (row.user, row.event_id) in kept]
                    users = dict.fromkeys(row.user for row in mine)
                    if not done.done():
                        done.set_result(Stored(mine, {user: stored.counts[user] for user in users}))
        finally:
            self._writing = False


_groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupCommit] = weakref.WeakKeyDictionary()


async def astore(rows: Sequence[Row]) -> Stored:
    """`store` from async code, committed together with the stores that wait meanwhile."""
    loop = asyncio.get_running_loop()
    group = _groups.get(loop)
    if group is None:
        group = _groups[loop] = _GroupCommit()
    return await group.store(rows)


aforget = _in_database_thread(forget)
aerase = _in_database_thread(erase)
apage = _in_database_thread(page, thread_sensitive=False)
acounts_of = _in_database_thread(counts_of, thread_sensitive=False)
