"""The inbox's rows (DESIGN §10): store an event for its users, list, count, mark, delete.

Everything here is database work, run in Django's thread for sync code (`sync_to_async`), one
transaction per call. Publishing the `inbox.changed` event that follows each change is
realtime/publish.py's (`apublish` stores rows with the event it publishes;
`apublish_inbox_change` after a mark or delete), so this module imports nothing that publishes.

Lists are newest first by row id, the cursor being the last id seen: rows added while a client
pages have higher ids, so paging has no duplicate and no gap. Counts exclude archived rows; they
are each user's InboxCounter, which every change here keeps in the same transaction (reading the
state of the rows it changes first, under the user's lock), so no read counts rows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection, transaction
from django.db.models import BooleanField, Case, Count, ExpressionWrapper, Q, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from .conf import notifier_settings
from .events import rfc3339
from .models import InboxCounter, InboxPreference, Notification

P = ParamSpec("P")
T = TypeVar("T")

STATUSES = ("unread", "read", "archived", "all")  # and None: everything not archived
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
        "created_at": rfc3339(row.created_at),
        "read_at": rfc3339(row.read_at),
        "seen_at": rfc3339(row.seen_at),
        "archived_at": rfc3339(row.archived_at),
    }


def counts_of(users: Iterable[str]) -> dict[str, dict[str, int]]:
    """Each user's `unread`, `unseen` and `total` (not archived), from their counters: one query
    for all of them, reading no notification."""
    wanted = list(dict.fromkeys(users))
    found = {
        user: _as_counts(values)
        for user, *values in InboxCounter.objects.filter(user__in=wanted).values_list("user", *_COUNTERS)
    }
    return {user: found.get(user, _as_counts(_NOTHING)) for user in wanted}


class State(NamedTuple):
    """A notification's read state, as the counters see it."""

    read: bool
    seen: bool
    archived: bool


NEW = State(read=False, seen=False, archived=False)
_COUNTERS = ("unread", "unseen", "total", "stored")
_NOTHING = (0, 0, 0, 0)
_CHUNK = 500  # rows per statement: far below SQLite's and PostgreSQL's parameter limits


def _weight(state: State | None) -> tuple[int, int, int, int]:
    """What one notification in `state` (None: no notification) adds to each counter."""
    if state is None:
        return _NOTHING
    live = not state.archived
    return (int(live and not state.read), int(live and not state.seen), int(live), 1)


class _Mark(NamedTuple):
    changes: Q  # the rows a mark changes (so the number updated is the number changed)
    values: Callable[[datetime], dict[str, Any]]  # what it sets
    after: Callable[[State], State]


_MARKS = {
    # read implies seen: one statement sets both
    "read": _Mark(
        Q(read_at__isnull=True),
        lambda at: {"read_at": at, "seen_at": Coalesce("seen_at", Value(at))},
        lambda s: State(True, True, s.archived),
    ),
    "unread": _Mark(Q(read_at__isnull=False), lambda at: {"read_at": None}, lambda s: State(False, s.seen, s.archived)),
    "seen": _Mark(Q(seen_at__isnull=True), lambda at: {"seen_at": at}, lambda s: State(s.read, True, s.archived)),
    "archived": _Mark(
        Q(archived_at__isnull=True), lambda at: {"archived_at": at}, lambda s: State(s.read, s.seen, True)
    ),
    "unarchived": _Mark(
        Q(archived_at__isnull=False), lambda at: {"archived_at": None}, lambda s: State(s.read, s.seen, False)
    ),
}
MARKS = tuple(_MARKS)


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
        if not rows:
            return Stored([], {})
        users = sorted({r.user for r in rows})
        added: dict[str, list[int]] = {user: list(_NOTHING) for user in users}
        for user in _insert(rows):  # before the lock: no other change sees them before this commits
            _add(added, user, _weight(NEW))
        counters = _add_to_counters(added)  # takes the users' locks
        dropped = _retain(users, counters)
        if dropped:
            counters.update(_add_to_counters(dropped))
        return Stored(rows, {user: _as_counts(counters[user]) for user in users})


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


def _insert(rows: Sequence[Row]) -> list[str]:
    """Insert `rows`, leaving one already stored as it is; the user of each row inserted (the
    ORM's bulk insert cannot say which rows a conflict skipped)."""
    qn = connection.ops.quote_name
    at = timezone.now()
    found = _insert_returning(
        Notification._meta.db_table,
        _STORED_COLUMNS,
        [(r.user, r.event_id, r.event, r.data, r.category, r.channel, at) for r in rows],
        f"ON CONFLICT ({qn('user')}, {qn('event_id')}) DO NOTHING RETURNING {qn('user')}",
    )
    return [user for (user,) in found]


# What `_insert_returning` writes, each column with its PostgreSQL type.
_STORED_COLUMNS = {
    "user": "varchar",
    "event_id": "varchar",
    "event": "varchar",
    "data": "jsonb",
    "category": "varchar",
    "channel": "varchar",
    "created_at": "timestamptz",
}
_COUNTER_COLUMNS = {"user": "varchar"} | dict.fromkeys(_COUNTERS, "integer")


def _insert_returning(
    table: str, columns: dict[str, str], rows: Sequence[Sequence[Any]], then: str
) -> list[tuple[Any, ...]]:
    """INSERT `rows` (values for `columns`, each name mapped to its PostgreSQL type; a `jsonb`
    value is the decoded data, a `timestamptz` one a datetime) into `table`, followed by `then`
    (ON CONFLICT … RETURNING …, which PostgreSQL and SQLite both have), in order, `_CHUNK` rows
    a statement; what RETURNING gave. PostgreSQL gets the rows as one JSON parameter
    (`json_to_recordset`): psycopg scans a statement's text for placeholders, about 7 ms for
    2,000 of them, and builds an array parameter's text element by element in Python, where one
    `json.dumps` of the rows is C. SQLite gets VALUES."""
    qn = connection.ops.quote_name
    names = ", ".join(qn(name) for name in columns)
    returned: list[tuple[Any, ...]] = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            if connection.vendor == "postgresql":
                types = ", ".join(f"{qn(name)} {kind}" for name, kind in columns.items())
                source = f"SELECT {names} FROM json_to_recordset(%s::json) AS r({types})"  # noqa: S608
                params: list[Any] = [json.dumps([dict(zip(columns, row, strict=True)) for row in chunk], default=_iso)]
            else:
                one = "(" + ", ".join(["%s"] * len(columns)) + ")"
                source = "VALUES " + ", ".join([one] * len(chunk))
                kinds = list(columns.values())
                params = [_for_sqlite(kind, value) for row in chunk for kind, value in zip(kinds, row, strict=True)]
            # names from the models, values as parameters
            cursor.execute(f"INSERT INTO {qn(table)} ({names}) {source} {then}", params)  # noqa: S608
            returned += cursor.fetchall()
    return returned


def _iso(value: Any) -> str:
    """A datetime in the rows' JSON (the only value `json` cannot write itself)."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _for_sqlite(kind: str, value: Any) -> Any:
    """A value of `_insert_returning`'s rows as a SQLite parameter, as the ORM writes it."""
    if kind == "jsonb":
        return None if value is None else json.dumps(value)  # None: SQL NULL, as the ORM stores it
    if kind == "timestamptz":
        return connection.ops.adapt_datetimefield_value(value)
    return value


def _retain(users: list[str], counters: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Apply NOTIFIER_INBOX_TTL_DAYS and NOTIFIER_INBOX_MAX_PER_USER to `users` (only theirs: no
    full-table scan on the publish path), whose locked counters are `counters`; what that does
    to the counters. Over the limit, the oldest read or archived rows go first, then the
    oldest unread."""
    dropped: dict[str, list[int]] = {}
    cutoff = timezone.now() - timedelta(days=notifier_settings.INBOX_TTL_DAYS)
    if _any_older_than(cutoff):  # rarely, where `expire_inbox` runs daily
        _delete(Notification.objects.filter(user__in=users, created_at__lt=cutoff), dropped)
    limit = notifier_settings.INBOX_MAX_PER_USER
    for user in users:
        excess = counters[user][3] + dropped.get(user, _NOTHING)[3] - limit
        if excess > 0:
            done = Q(read_at__isnull=False) | Q(archived_at__isnull=False)
            oldest = (
                Notification.objects.filter(user=user)
                .order_by(Case(When(done, then=0), default=1), "id")
                .values_list("id", flat=True)[:excess]
            )
            _delete(Notification.objects.filter(id__in=list(oldest)), dropped)
    return dropped


def _any_older_than(cutoff: datetime) -> bool:
    """Whether any notification is older than `cutoff`: one probe of the age index, in SQL
    written once (the ORM built this query in about as long as the database answered it)."""
    with connection.cursor() as cursor:
        cursor.execute(_ANY_OLDER_SQL, [connection.ops.adapt_datetimefield_value(cutoff)])
        return cursor.fetchone() is not None


_ANY_OLDER_SQL = f"SELECT 1 FROM {Notification._meta.db_table} WHERE created_at < %s LIMIT 1"  # noqa: S608


def forget(rows: Sequence[Row]) -> None:
    """Take back rows whose event could not be published (nothing announced them)."""
    by_event: dict[str, list[str]] = {}
    for r in rows:
        by_event.setdefault(r.event_id, []).append(r.user)
    with transaction.atomic():
        _lock({r.user for r in rows})
        deltas: dict[str, list[int]] = {}
        for event_id, users in by_event.items():
            _delete(Notification.objects.filter(event_id=event_id, user__in=users), deltas)
        _add_to_counters(deltas)


def expire(batch: int = 1000) -> int:
    """Delete every notification older than NOTIFIER_INBOX_TTL_DAYS (an index range scan, `batch`
    rows per transaction); the publish path does it only for the users it stores for
    (`manage.py expire_inbox`)."""
    cutoff = timezone.now() - timedelta(days=notifier_settings.INBOX_TTL_DAYS)
    deleted = 0
    while True:
        with transaction.atomic():
            old = list(
                Notification.objects.filter(created_at__lt=cutoff)
                .order_by("created_at")
                .values_list("id", "user")[:batch]
            )
            if not old:
                return deleted
            _lock({user for _, user in old})
            deltas: dict[str, list[int]] = {}
            deleted += _delete(Notification.objects.filter(id__in=[i for i, _ in old], created_at__lt=cutoff), deltas)
            _add_to_counters(deltas)


def erase(user: str) -> int:
    """Delete every notification, preference and counter of `user` (a data-protection request)."""
    with transaction.atomic():
        _lock([user])
        InboxPreference.objects.filter(user=user).delete()
        deleted, _ = Notification.objects.filter(user=user).delete()
        InboxCounter.objects.filter(user=user).delete()
        return deleted


def recount(users: Iterable[str] | None = None) -> int:
    """Set the counters of `users` (None: everyone with notifications or counters) from their
    rows, for rows written around this module (a bulk load, SQL by hand); how many users.
    `manage.py recount_inbox`."""
    if users is None:
        everyone = Notification.objects.values_list("user", flat=True).distinct().order_by()
        users = {*everyone, *InboxCounter.objects.values_list("user", flat=True)}
    wanted = sorted(set(users))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        with transaction.atomic():
            _add_to_counters(dict.fromkeys(chunk, _NOTHING))  # takes their locks
            counts = {user: list(_NOTHING) for user in chunk}
            for user, state, n in _states(Notification.objects.filter(user__in=chunk)):
                _add(counts, user, _weight(state), n)
            _add_to_counters(counts, replace=True)
    return len(wanted)


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
    change = _MARKS.get(mark_as)
    if change is None:
        raise ValueError(f"unknown mark {mark_as!r}")
    with transaction.atomic():
        current = _lock([user])
        if user not in current:  # no counter: no notification
            return 0, _as_counts(_NOTHING)
        rows = Notification.objects.filter(change.changes, user=user)
        if ids is not None:
            rows = rows.filter(event_id__in=list(ids))
        elif category is not None:
            rows = rows.filter(category=category)
        deltas = _changes(rows, change.after)
        if not deltas:
            return 0, _as_counts(current[user])
        updated = rows.update(**change.values(timezone.now()))
        return updated, _as_counts(_add_to_counters(deltas)[user])


def delete(user: str, event_id: str) -> dict[str, int] | None:
    """Delete one of `user`'s notifications: the new counts, or None when there is no such one."""
    with transaction.atomic():
        if not _lock([user]):
            return None
        deltas: dict[str, list[int]] = {}
        if not _delete(Notification.objects.filter(user=user, event_id=event_id), deltas):
            return None
        return _as_counts(_add_to_counters(deltas)[user])


def _lock(users: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Lock the counters of those of `users` who have one, in user order, and read them. Every
    change of a user's rows takes this lock (or `_add_to_counters`') before it reads or
    changes them, so no other change of their rows runs meanwhile and the states read before a
    change are exact; in one order, so two transactions never wait for each other in a cycle.
    A store inserts its new rows first: nothing else sees them before it commits, and it
    commits only once it holds the lock. (SQLite writes one transaction at a time: it has no
    row locks, nor needs them.)"""
    found = InboxCounter.objects.select_for_update().filter(user__in=list(users)).order_by("user")
    return {user: tuple(values) for user, *values in found.values_list("user", *_COUNTERS)}


def _add_to_counters(deltas: Mapping[str, Sequence[int]], replace: bool = False) -> dict[str, tuple[int, ...]]:
    """Add `deltas` to their users' counters (or, `replace`, set them), creating those missing,
    in user order like `_lock`, whose lock this takes too; the new values. One upsert per
    chunk of users (RETURNING, on PostgreSQL and SQLite)."""
    table, user = (connection.ops.quote_name(n) for n in (InboxCounter._meta.db_table, "user"))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" if replace else f"{c} = {table}.{c} + EXCLUDED.{c}" for c in _COUNTERS)
    found = _insert_returning(
        InboxCounter._meta.db_table,
        _COUNTER_COLUMNS,
        [(u, *deltas[u]) for u in sorted(deltas)],
        f"ON CONFLICT ({user}) DO UPDATE SET {sets} RETURNING {user}, {', '.join(_COUNTERS)}",
    )
    return {row[0]: tuple(row[1:]) for row in found}


def _states(rows: QuerySet[Notification]) -> list[tuple[str, State, int]]:
    """How many of `rows` each user has in each state: one grouped query."""
    flags = {
        f"is_{name}": ExpressionWrapper(Q(**{f"{name}_at__isnull": False}), output_field=BooleanField())
        for name in State._fields
    }
    grouped = rows.order_by().annotate(**flags).values_list("user", *flags).annotate(n=Count("id"))
    return [(user, State(bool(read), bool(seen), bool(archived)), n) for user, read, seen, archived, n in grouped]


def _changes(rows: QuerySet[Notification], after: Callable[[State], State | None]) -> dict[str, list[int]]:
    """What changing each of `rows` from its state to `after(state)` (None: deleting it) does
    to each user's counters: read before the change, under the users' locks."""
    deltas: dict[str, list[int]] = {}
    for user, state, n in _states(rows):
        _add(deltas, user, tuple(a - b for a, b in zip(_weight(after(state)), _weight(state), strict=True)), n)
    return deltas


def _delete(rows: QuerySet[Notification], deltas: dict[str, list[int]]) -> int:
    """Delete `rows`, adding what that does to `deltas`; how many. No DELETE when there is none
    (the usual case of the retention checks on the publish path)."""
    changes = _changes(rows, lambda state: None)
    if not changes:
        return 0
    deleted, _ = rows.delete()
    for user, change in changes.items():
        _add(deltas, user, change)
    return deleted


def _add(deltas: dict[str, list[int]], user: str, change: Sequence[int], times: int = 1) -> None:
    into = deltas.setdefault(user, list(_NOTHING))
    for i, value in enumerate(change):
        into[i] += value * times


def _as_counts(values: Sequence[int]) -> dict[str, int]:
    return {"unread": values[0], "unseen": values[1], "total": values[2]}


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
