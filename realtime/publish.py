"""`publish()`: the one path every event takes, and the only writer to the channel layer.

validate -> assign an id -> encode the frame once per channel -> store it in history, getting
its offset atomically -> `group_send` the encoded frame to the channel's group, where each
server process's hub hands it to its local sockets.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError, transaction
from redis.exceptions import RedisError

from . import broker, history, idempotency, inbox, metrics, vapid
from . import push as webpush
from .bridge import run_sync
from .channels import InvalidChannel, history_limits, name_in_namespace, personal_channel, policy_of, validate_channel
from .conf import notifier_settings
from .events import dumps, new_event_id, now
from .frames import FrameTemplate, event_template
from .history import Append, Position, get_history
from .redis import Replicas, replicated_now

logger = logging.getLogger(__name__)

MAX_EVENT_NAME_LENGTH = 128
INTERNAL = "internal"  # the publisher of Django code's own events
SOURCES = {"celery", "client"}  # publisher names that are also metric sources; API keys are "key:<id>"
# Events only notifier itself publishes (`inbox.changed`); publishers are refused them.
RESERVED_EVENT_PREFIX = "inbox."
INBOX_CHANGED = "inbox.changed"


class PublishError(Exception):
    """A publish refused before anything was stored; `code` is stable, for API errors."""

    code = "invalid"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidPublish(PublishError):
    code = "invalid"


class PayloadTooLarge(PublishError):
    code = "payload_too_large"


class Unavailable(PublishError):
    """Redis (history or channel layer) failed: the event was not acknowledged."""

    code = "unavailable"


class StoredNotSent(Unavailable):
    """History stored the event, then the channel layer failed. It is still not acknowledged
    (503), but it is delivered: the hubs find it in history (gap fill, position check). So its
    idempotency key keeps this answer, and a retry with the key publishes no second copy."""

    def __init__(self, result: PublishResult) -> None:
        super().__init__(
            "the event was stored but the channel layer is unavailable; it is delivered when the "
            "layer is back. A retry with the same idempotency key publishes no second copy",
            {"stored": True, **result.as_dict()},
        )
        self.result = result


class NotReplicated(StoredNotSent):
    """Stored on the Redis master (and sent, or delivered from history when the send failed),
    but fewer replicas than NOTIFIER_REPLICA_ACKS acknowledged it in time: not acknowledged
    (503), since a failover now could lose it. A retry
    with the same idempotency key publishes no second copy: it answers 202 once the replicas
    have caught up (see `apublish`), this again until then."""

    code = "not_replicated"

    def __init__(self, result: PublishResult) -> None:
        PublishError.__init__(
            self,
            "the event was stored on the Redis master and delivered, but not acknowledged by enough "
            "replicas in time (NOTIFIER_REPLICA_ACKS), so a failover could still lose it. A retry with "
            "the same idempotency key publishes no second copy",
            {"stored": True, "replicated": False, **result.as_dict()},
        )
        self.result = result


@dataclass(frozen=True)
class PublishResult:
    id: str
    channels: dict[str, Position]
    inbox: dict[str, str] | None = None  # user -> stored notification id, for `inbox=True`

    def as_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": self.id, "channels": {c: p.as_dict() for c, p in self.channels.items()}}
        if self.inbox is not None:
            answer["inbox"] = self.inbox
        return answer

    @classmethod
    def from_dict(cls, answer: dict[str, Any]) -> PublishResult:
        channels = {c: Position(p["offset"], p["epoch"]) for c, p in answer["channels"].items()}
        return cls(answer["id"], channels, answer.get("inbox"))


class _Prepared(NamedTuple):
    """One event ready to store: its id, its history entries, its inbox rows, and its pushes
    (the spec and the targeted (user, channel)s), queued once it is stored."""

    event_id: str
    items: list[Append]
    rows: list[inbox.Row]
    push: webpush.Planned | None = None


class Targets(list[str]):
    """Target channels already checked as `check_channels` checks them (valid names, known
    namespaces, no repeats, within the limit). The notify contract (realtime/notify.py) checks
    each field of a body once and hands its targets over as this, so they are not checked again."""


def check_channels(channels: Sequence[str]) -> list[str]:
    """Validated, de-duplicated channels in first-seen order."""
    if isinstance(channels, Targets):
        return channels
    if not channels:
        raise InvalidPublish("at least one target channel or user is required")
    unique = list(dict.fromkeys(channels))
    limit = notifier_settings.MAX_CHANNELS_PER_PUBLISH
    if len(unique) > limit:
        raise InvalidPublish(f"at most {limit} channels per publish", {"limit": limit})
    for channel in unique:
        try:
            validate_channel(channel)
        except InvalidChannel as exc:
            raise InvalidPublish(f"{channel!r}: {exc}", {"channel": channel}) from None
        if policy_of(channel) is None:
            raise InvalidPublish(f"{channel!r}: unknown namespace", {"channel": channel})
    return unique


def encode_data(data: Any) -> str:
    """`data` as compact JSON, refused when not JSON or over the payload limit."""
    try:
        encoded = dumps(data)
    except (TypeError, ValueError) as exc:
        raise InvalidPublish(f"data is not JSON-serializable: {exc}") from None
    except RecursionError:
        raise InvalidPublish("data is nested too deeply") from None
    size = len(encoded.encode())
    limit = notifier_settings.MAX_PAYLOAD_BYTES
    if size > limit:
        raise PayloadTooLarge(f"data is {size} bytes encoded; the limit is {limit}", {"size": size, "limit": limit})
    return encoded


def check_event_name(event: Any, publisher: str = INTERNAL) -> str:
    if not isinstance(event, str) or not event or len(event) > MAX_EVENT_NAME_LENGTH:
        raise InvalidPublish(f"event must be a non-empty string of at most {MAX_EVENT_NAME_LENGTH} characters")
    if event.startswith(RESERVED_EVENT_PREFIX) and publisher != INTERNAL:
        raise InvalidPublish(f"event names starting with {RESERVED_EVENT_PREFIX!r} are reserved", {"event": event})
    return event


async def apublish(
    channels: Sequence[str],
    event: str,
    data: Any = None,
    *,
    sender: str | None = None,
    idempotency_key: str | None = None,
    publisher: str = INTERNAL,
    inbox: bool = False,
    category: str | None = None,
    push: webpush.PushSpec | None = None,
    event_id: str | None = None,
) -> PublishResult:
    """Store and send one event to each channel; raises PublishError, never half-acknowledges.

    With an `idempotency_key`, a repeat from the same `publisher` within the window returns the
    first answer and publishes nothing. With `inbox`, each targeted user (`user:<id>`) also gets
    the event stored as a notification (in `category`), committed before the event is sent.
    With `push`, their browsers get a Web Push (realtime/push.py), queued once it is stored.
    `event_id` is the id of an event answered before it was published (realtime/scheduling.py).
    """
    started = time.perf_counter()
    prepared = _prepare(channels, event, data, sender, publisher, inbox, category, push, event_id)
    if idempotency_key is None:
        (result,) = await _store_and_send([prepared])
        _count_publish(publisher, started)
        return result
    store, key, claimed = await claim_key(publisher, idempotency_key)
    if claimed.answer is not None:
        return await _answer_again(store, key, claimed.answer)
    stored: list[PublishResult] = []
    try:
        (result,) = await _store_and_send([prepared], stored)
    except BaseException:
        if stored:  # in history, so delivered: a retry must get this answer, not publish again
            # With replica acks, only a completed publish is known to be replicated: a retry of
            # any other checks first (`_answer_again`).
            await _record(store, key, stored[0], replicated=not Replicas.required().count)
        else:  # nothing stored: a retry goes through
            with contextlib.suppress(RedisError, OSError):
                await store.release(key)
        raise
    await _record(store, key, result)
    _count_publish(publisher, started)
    return result


async def claim_key(
    publisher: str, idempotency_key: str
) -> tuple[idempotency.IdempotencyStore, str, idempotency.Claim]:
    """Claim the publisher's key (or wait for the answer of the publish that holds it); the
    store, the key's name in it and the claim. Raises Unavailable when it cannot be claimed."""
    store, key = idempotency.get_store(), idempotency.store_key(publisher, idempotency_key)
    try:
        return store, key, await idempotency.claim(store, key)
    except idempotency.StillPending:
        raise Unavailable("a publish with this idempotency key is still in progress; retry") from None
    except (RedisError, OSError) as exc:
        raise Unavailable("Redis is unavailable; the event was not published") from exc


async def _answer_again(store: idempotency.IdempotencyStore, key: str, answer: dict[str, Any]) -> PublishResult:
    """The first publish's answer for a retry. One that was stored but not replicated in time
    is acknowledged only once the replicas have every write made so far (so also it)."""
    result = PublishResult.from_dict(answer)
    if answer.get("replicated", True):
        return result
    try:
        caught_up = await replicated_now(Replicas.required())
    except (RedisError, OSError) as exc:
        raise Unavailable("Redis is unavailable; the event's replication could not be checked") from exc
    if not caught_up:
        raise NotReplicated(result)
    await _record(store, key, result)
    return result


async def _record(
    store: idempotency.IdempotencyStore, key: str, result: PublishResult, replicated: bool = True
) -> None:
    answer = result.as_dict() if replicated else {**result.as_dict(), "replicated": False}
    try:
        await store.complete(key, dumps(answer), notifier_settings.IDEMPOTENCY_WINDOW_SECS)
    except (RedisError, OSError) as exc:  # the claim lapses after CLAIM_TTL_SECS; a retry then may publish again
        logger.warning("could not record idempotency key: %s", exc)


def _count_publish(publisher: str, started: float) -> None:
    source = "api" if publisher.startswith("key:") else publisher if publisher in SOURCES else "internal"
    metrics.inc("notifier_events_published", source=source)
    metrics.observe_publish(time.perf_counter() - started)


def _prepare(
    channels: Sequence[str],
    event: str,
    data: Any,
    sender: str | None,
    publisher: str = INTERNAL,
    to_inbox: bool = False,
    category: str | None = None,
    push_spec: webpush.PushSpec | None = None,
    event_id: str | None = None,
) -> _Prepared:
    """Validate one event and build its history entries (its id, and one frame per channel)
    and, for the inbox, one row per targeted user; and, for a push, who it goes to."""
    targets = check_channels(channels)
    check_event_name(event, publisher)
    data_json = encode_data(data)
    event_id, ts = event_id or new_event_id(), now()
    items = [_append_item(ch, event_template(ch, event_id, event, data_json, ts, sender)) for ch in targets]
    rows: list[inbox.Row] = []
    if to_inbox:
        rows = [inbox.Row(user, event_id, event, data, category, ch) for ch, user in _users_of(targets)]
        if not rows:
            raise InvalidPublish("inbox: true needs a user or users target")
    pushes = None
    if push_spec is not None:
        try:
            vapid.private_key()
        except vapid.NotConfigured as exc:
            raise InvalidPublish(str(exc)) from None
        users = [(user, channel) for channel, user in _users_of(targets)]
        if not users:
            raise InvalidPublish("push needs a user or users target")
        size = webpush.payload_size(push_spec, [channel for _, channel in users], event)
        if size > webpush.MAX_PAYLOAD_BYTES:
            limit = webpush.MAX_PAYLOAD_BYTES
            raise PayloadTooLarge(
                f"the push payload is {size} bytes encoded; the limit is {limit}", {"size": size, "limit": limit}
            )
        pushes = webpush.Planned(push_spec, event, users, category)
    return _Prepared(event_id, items, rows, pushes)


def _users_of(targets: Sequence[str]) -> list[tuple[str, str]]:
    """(channel, user) of each personal channel (`user:<id>`) among `targets`."""
    found = []
    for channel in targets:
        policy = policy_of(channel)
        if policy is not None and policy.personal:
            found.append((channel, name_in_namespace(channel)))
    return found


def _append_item(channel: str, template: FrameTemplate) -> Append:
    policy = policy_of(channel)
    assert policy is not None  # check_channels refused unknown namespaces
    size, ttl_secs = history_limits(channel, policy.history_size, policy.history_ttl_secs)
    return Append(channel, template, size, ttl_secs)


class PublishRequest(NamedTuple):
    """One event of `apublish_many`: the arguments of `apublish`."""

    channels: Sequence[str]
    event: str
    data: Any = None
    sender: str | None = None
    idempotency_key: str | None = None
    publisher: str = INTERNAL
    inbox: bool = False
    category: str | None = None
    push: webpush.PushSpec | None = None
    event_id: str | None = None

    def options(self) -> dict[str, Any]:
        """`apublish`'s (and `publish`'s) keyword arguments."""
        return {
            "sender": self.sender,
            "idempotency_key": self.idempotency_key,
            "publisher": self.publisher,
            "inbox": self.inbox,
            "category": self.category,
            "push": self.push,
            "event_id": self.event_id,
        }

    def check(self) -> None:
        """Refuse it as `apublish` would (PublishError), publishing nothing: for an event
        published later, so that it is refused now."""
        _prepare(
            self.channels, self.event, self.data, self.sender, self.publisher, self.inbox, self.category, self.push
        )


async def apublish_many(requests: Sequence[PublishRequest]) -> list[PublishResult | PublishError]:
    """Publish several events, each with `apublish`'s semantics, in request order.

    Events are stored in one history round trip and sent in one pipelined round trip, so
    their offsets follow the request order. The idempotency keys among them are claimed in one
    round trip before and recorded in one after; an event whose key was answered already gets
    that answer, one whose key another publish holds waits for it as `apublish` does. Each
    entry of the answer is the event's result or its own PublishError (a refusal, or
    Unavailable when Redis failed).
    """
    answers: list[PublishResult | PublishError | None] = [None] * len(requests)
    run: list[tuple[int, _Prepared, float]] = []  # (index, event, started)
    for index, request in enumerate(requests):
        started = time.perf_counter()
        try:
            prepared = _prepare(
                request.channels,
                request.event,
                request.data,
                request.sender,
                request.publisher,
                request.inbox,
                request.category,
                request.push,
                request.event_id,
            )
        except PublishError as exc:
            answers[index] = exc
            continue
        run.append((index, prepared, started))
    waiting = await _claim_keys(requests, run, answers) if any(r.idempotency_key for r in requests) else []
    if run:
        await _publish_run(requests, run, answers)
    for index in waiting:  # another publish held the key: its answer, once it has one
        request = requests[index]
        try:
            answers[index] = await apublish(request.channels, request.event, request.data, **request.options())
        except PublishError as exc:
            answers[index] = exc
    assert all(answer is not None for answer in answers)
    return answers  # type: ignore[return-value]


def _key_of(request: PublishRequest) -> str | None:
    if request.idempotency_key is None:
        return None
    return idempotency.store_key(request.publisher, request.idempotency_key)


async def _claim_keys(
    requests: Sequence[PublishRequest],
    run: list[tuple[int, _Prepared, float]],
    answers: list[PublishResult | PublishError | None],
) -> list[int]:
    """Claim the run's idempotency keys in one round trip, keeping in `run` the events to
    publish: those without a key and those whose key is now ours. Answered keys get their
    answer; the indexes of the keys another publish holds are returned, to wait for after."""
    keyed = [(n, key) for n, (index, _, _) in enumerate(run) if (key := _key_of(requests[index])) is not None]
    store, waiting, dropped = idempotency.get_store(), [], set()
    try:
        values = await store.claim_many([key for _, key in keyed])
    except (RedisError, OSError) as exc:
        logger.warning("idempotency keys not claimed: %s", exc)
        for n, _ in keyed:
            answers[run[n][0]] = Unavailable("Redis is unavailable; the event was not published")
        values, dropped = [], {n for n, _ in keyed}
    for (n, key), value in zip(keyed, values, strict=False):
        index = run[n][0]
        if value is None:
            continue
        dropped.add(n)
        if value == idempotency.PENDING:
            waiting.append(index)
            continue
        try:
            answers[index] = await _answer_again(store, key, json.loads(value))
        except PublishError as exc:
            answers[index] = exc
    run[:] = [entry for n, entry in enumerate(run) if n not in dropped]
    return waiting


async def _publish_run(
    requests: Sequence[PublishRequest],
    run: list[tuple[int, _Prepared, float]],
    answers: list[PublishResult | PublishError | None],
) -> None:
    """Store and send the run's events, and record the answers of those with a key (stored
    ones even when the send failed: a retry must get their answer, not publish again)."""
    store = idempotency.get_store()
    keys = [_key_of(requests[index]) for index, _, _ in run]
    stored: list[PublishResult] = []
    try:
        results = await _store_and_send([prepared for _, prepared, _ in run], stored)
    except BaseException as exc:
        if stored:  # with replica acks, only a completed publish is known to be replicated
            await _record_many(store, keys, stored, replicated=not Replicas.required().count)
        else:
            with contextlib.suppress(RedisError, OSError):
                await store.release_many([key for key in keys if key is not None])
        if not isinstance(exc, Unavailable):
            raise
        kind = NotReplicated if isinstance(exc, NotReplicated) else StoredNotSent
        for n, (index, *_) in enumerate(run):
            answers[index] = kind(stored[n]) if stored else exc
        return
    await _record_many(store, keys, results)
    for (index, _, started), result in zip(run, results, strict=True):
        answers[index] = result
        _count_publish(requests[index].publisher, started)


async def _record_many(
    store: idempotency.IdempotencyStore, keys: list[str | None], results: list[PublishResult], replicated: bool = True
) -> None:
    recorded = []
    for key, result in zip(keys, results, strict=True):
        if key is not None:
            answer = result.as_dict() if replicated else {**result.as_dict(), "replicated": False}
            recorded.append((key, dumps(answer)))
    if not recorded:
        return
    try:
        await store.complete_many(recorded, notifier_settings.IDEMPOTENCY_WINDOW_SECS)
    except (RedisError, OSError) as exc:  # the claims lapse after CLAIM_TTL_SECS; retries then may publish again
        logger.warning("could not record idempotency keys: %s", exc)


async def _store_and_send(
    events: list[_Prepared], stored_results: list[PublishResult] | None = None
) -> list[PublishResult]:
    """Store events (one history round trip for all) and send them to their channels' groups:
    one message per channel carrying its frames in offset order. On the production layer the
    history script sends them itself, in the same round trip (broker.script_send); otherwise
    the messages follow in one more.

    Inbox rows are committed first, in one transaction; each of their users then gets one
    `inbox.changed` event, stored and sent after the events in the same round trips. When
    history stores nothing, the rows are taken back. Once history has stored the events, their
    results are put in `stored_results`, so a caller whose send then failed (StoredNotSent, or
    cancelled) knows they will be delivered all the same.
    """
    rows = [row for event in events for row in event.rows]
    rows, changes = await _store_rows(rows) if rows else ([], [])
    kept = {(row.user, row.event_id) for row in rows}
    items = [item for event in [*events, *changes] for item in event.items]
    layer = get_channel_layer()
    send = broker.script_send(layer)  # None: sent below, after the store
    replicated = True
    try:
        stored = await get_history().append(items, send)
    except history.NotReplicated as exc:  # stored on the master: sent below, but not acknowledged
        logger.warning("publish not replicated in time: %s", exc)
        metrics.inc("notifier_redis_errors", operation="replica_ack")
        stored, replicated = exc.stored, False
    except (RedisError, OSError) as exc:
        logger.warning("publish failed: %s: %s", type(exc).__name__, exc)
        metrics.inc("notifier_redis_errors", operation="publish")
        if rows:
            await _take_back(rows)
        raise Unavailable("Redis is unavailable; the event was not published") from exc
    results, position = [], 0
    for event in events:
        appends = event.items
        records = stored[position : position + len(appends)]
        position += len(appends)
        channels = {i.channel: r.position for i, r in zip(appends, records, strict=True)}
        stored_for = None
        if event.rows:
            stored_for = {row.user: row.event_id for row in event.rows if (row.user, row.event_id) in kept}
        results.append(PublishResult(event.event_id, channels, stored_for))
    if stored_results is not None:
        stored_results.extend(results)
    for event in events:  # stored, so delivered: its pushes go too
        if event.push is not None:
            webpush.queue(event.event_id, event.push)
    try:
        if send is None:
            await broker.send_events(layer, items, stored)
    except (RedisError, OSError) as exc:
        logger.warning("publish stored but not sent: %s: %s", type(exc).__name__, exc)
        metrics.inc("notifier_redis_errors", operation="publish")
        if not replicated:  # stored, not sent, not replicated: acknowledged only once it is
            raise NotReplicated(results[0]) from exc
        if len(results) == 1:
            raise StoredNotSent(results[0]) from exc
        raise Unavailable("the events were stored but the channel layer is unavailable") from exc
    if not replicated:
        raise NotReplicated(results[0])
    return results


async def _store_rows(rows: list[inbox.Row]) -> tuple[list[inbox.Row], list[_Prepared]]:
    """Commit inbox rows: those stored (not those of a muted category), and the `inbox.changed`
    event of each of their users, to publish next."""
    try:
        stored = await inbox.astore(rows)
    except DatabaseError as exc:
        logger.warning("inbox store failed: %s: %s", type(exc).__name__, exc)
        metrics.inc("notifier_database_errors", operation="inbox_store")
        raise Unavailable("the database is unavailable; the event was not published") from exc
    ids: dict[str, list[str]] = {}
    for row in stored.rows:
        ids.setdefault(row.user, []).append(row.event_id)
    changes = [
        _prepare([personal_channel(user)], INBOX_CHANGED, inbox_change("added", ids[user], counts), None)
        for user, counts in stored.counts.items()
    ]
    return stored.rows, changes


async def _take_back(rows: list[inbox.Row]) -> None:
    try:
        await inbox.aforget(rows)
    except DatabaseError as exc:  # they stay, with no event in history: listed, never announced
        logger.warning("inbox rows of an unpublished event not taken back: %s", exc)


def inbox_change(
    action: str, ids: Sequence[str] | None, counts: dict[str, int], mark_as: str | None = None
) -> dict[str, Any]:
    """The data of an `inbox.changed` event (DESIGN §10)."""
    data: dict[str, Any] = {"action": action, "ids": list(ids) if ids is not None else None, "all": ids is None}
    if mark_as is not None:
        data["as"] = mark_as
    data["counts"] = counts
    return data


async def apublish_inbox_change(
    user: str, action: str, ids: Sequence[str] | None, counts: dict[str, int], mark_as: str | None = None
) -> None:
    """Tell every connection of `user` that their inbox changed (after a mark or a delete). The
    change is committed already: a failed publish is logged, and the next change corrects it."""
    try:
        await apublish([personal_channel(user)], INBOX_CHANGED, inbox_change(action, ids, counts, mark_as))
    except PublishError as exc:
        logger.warning("inbox.changed for a %s not published: %s", action, exc.message)


async def aerase_inbox(user: str) -> int:
    """Erase `user`'s notifications, preferences and the history of their channel (a
    data-protection request); the number of notifications deleted. Their open connections
    are told with one last `inbox.changed`, the first event of the channel's new history."""
    try:
        deleted = await inbox.aerase(user)
        await get_history().erase(personal_channel(user))
    except DatabaseError as exc:
        raise Unavailable("the database is unavailable; nothing was erased") from exc
    except (RedisError, OSError) as exc:
        raise Unavailable("Redis is unavailable; the notifications were erased, the channel's history not") from exc
    await apublish_inbox_change(user, "deleted", None, {"unread": 0, "unseen": 0, "total": 0})
    return deleted


def publish_on_commit(
    channels: Sequence[str], event: str, data: Any = None, *, using: str | None = None, **options: Any
) -> None:
    """`publish` once the transaction open on database `using` commits, at once when none is
    open, never when it rolls back: an event must not announce a row that was rolled back
    (Zulip's `send_event_on_commit`). `options` are `publish`'s keyword arguments. A publish that
    fails after the commit raises from the `atomic` block's exit (the rows stay committed):
    give an `idempotency_key` and retry it, or publish from a Celery task queued on commit."""
    transaction.on_commit(functools.partial(publish, channels, event, data, **options), using=using)


async def apublish_on_commit(
    channels: Sequence[str], event: str, data: Any = None, *, using: str | None = None, **options: Any
) -> None:
    """`publish_on_commit` for async code. Django runs transactions in sync code (`atomic()`
    inside `sync_to_async`, in its one thread-sensitive thread): a transaction open there defers
    the publish to its commit; with none open the event is published now."""
    if not await sync_to_async(_defer_to_commit)(channels, event, data, using, options):
        await apublish(channels, event, data, **options)


def _defer_to_commit(
    channels: Sequence[str], event: str, data: Any, using: str | None, options: dict[str, Any]
) -> bool:
    if not transaction.get_connection(using).in_atomic_block:
        return False
    transaction.on_commit(functools.partial(publish, channels, event, data, **options), using=using)
    return True


def publish(
    channels: Sequence[str],
    event: str,
    data: Any = None,
    *,
    sender: str | None = None,
    idempotency_key: str | None = None,
    publisher: str = INTERNAL,
    inbox: bool = False,
    category: str | None = None,
    push: webpush.PushSpec | None = None,
    event_id: str | None = None,
) -> PublishResult:
    """Sync `apublish` for views, tasks and scripts."""
    return run_sync(
        apublish,
        channels,
        event,
        data,
        sender=sender,
        idempotency_key=idempotency_key,
        publisher=publisher,
        inbox=inbox,
        category=category,
        push=push,
        event_id=event_id,
    )
