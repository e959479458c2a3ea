"""A faster route for the hot publish endpoints: POST /api/notify and POST /api/notify/batch.

Django's ASGI handler hops to a thread several times per request (request_started, the sync
view, `response.close()`), asgiref copies the request's context into each hop, so Django's
per-context cache handle (the throttle's Redis client) opens a new Redis connection for every
request, and the DRF view then calls back into the event loop to publish (DESIGN §8). This
route runs the very same DRF views' rules, in DRF's own code, in one hop:

1. in a worker thread that keeps its context (and so its cache and database handles):
   `NotifyView` / `NotifyBatchView`'s `initial()` — ApiKeyAuthentication, IsAuthenticated and
   HasScope, PublishRateThrottle (with the batch's `throttle_cost`) — then the same serializers
   and `KeyScopedView.check_channels`;
2. on the event loop: `apublish` (or, for a batch, `apublish_many`: one history round trip
   and one pipelined send for the whole batch, each event with `apublish`'s semantics);
3. errors go through the view's `handle_exception`, so the exception handler of
   api/exceptions.py writes `{"code", "message", "details"}` and the headers (Retry-After,
   WWW-Authenticate) as it does for every other endpoint; the answer is rendered by DRF.

Every other method and path goes on to Django unchanged (a GET here still answers 405).
"""

from __future__ import annotations

import asyncio
import contextvars
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.handlers.asgi import ASGIRequest
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response

from realtime.publish import PublishError, PublishRequest, PublishResult, Unavailable, apublish, apublish_many

from .authentication import publisher_of
from .exceptions import exception_handler
from .serializers import BatchRequestSerializer, NotifyRequestSerializer
from .views import KeyScopedView, NotifyBatchView, NotifyView

# Authentication and the throttle block on the database and Redis; each blocking call hands the
# GIL back and waits to get it again, so a few more threads than cores keep requests moving
# (2 threads: 150 requests/s here, 16: 250; the process is CPU-bound by then).
WORKER_THREADS = 16

ASGIApp = Any


class _Worker:
    """Worker threads for the sync part of a request, each keeping one context for its life.

    Django's cache and database handles live in asgiref Locals; in a context that lives on,
    they (and their connections) are reused from request to request. `request_started` and
    `request_finished` are sent around each request as Django does, so the database connection
    is still closed or kept as CONN_MAX_AGE says.
    """

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="notifier-api")
        self.local = threading.local()

    def _in_context(self, fn: Any, *args: Any) -> Any:
        context = getattr(self.local, "context", None)
        if context is None:
            context = self.local.context = contextvars.Context()
        return context.run(fn, *args)

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._in_context, fn, *args)


_serializers = threading.local()


def validate_notify(body: Any) -> dict[str, Any]:
    """NotifyRequestSerializer's validated data, or the ValidationError `is_valid` would raise.

    One serializer instance per thread, reused the way DRF's ListSerializer reuses its child:
    building one deep-copies all its fields, which costs several times the validation itself.
    """
    serializer = getattr(_serializers, "notify", None)
    if serializer is None:
        serializer = _serializers.notify = NotifyRequestSerializer()
    try:
        attrs: dict[str, Any] = serializer.run_validation(body)
    except exceptions.ValidationError as exc:
        raise exceptions.ValidationError(exc.detail) from None
    return attrs


def batch_error(exc: Exception) -> dict[str, Any]:
    """A refused event of a batch, as NotifyBatchView.publish_one answers it."""
    response = exception_handler(exc, {})
    assert response is not None
    error = response.data
    return {"error": {"code": error["code"], "message": error["message"], "details": error["details"]}}


@dataclass
class _Prepared:
    view: KeyScopedView
    request: Request
    response: Response | None = None  # set when refused before publishing
    notify: dict[str, Any] | None = None
    batch: list[dict[str, Any]] | None = None  # validated bodies, or {"error": ...} entries
    publisher: str = ""


def _prepare(view_class: type[KeyScopedView], django_request: ASGIRequest, scope: dict[str, Any]) -> _Prepared:
    """The view's dispatch up to the publish, in the worker thread (ORM, cache, serializers)."""
    signals.request_started.send(sender=FastPublishApp, scope=scope)
    try:
        view = view_class()
        view.args, view.kwargs = (), {}
        request = view.initialize_request(django_request)
        view.request = request
        view.headers = view.default_response_headers
        prepared = _Prepared(view, request)
        try:
            view.initial(request)
            if isinstance(view, NotifyBatchView):
                batch = BatchRequestSerializer(data=request.data)
                batch.is_valid(raise_exception=True)
                prepared.batch = [_validate_batch_event(view, request, body) for body in batch.validated_data["events"]]
            else:
                attrs = validate_notify(request.data)
                view.check_channels(request, attrs["targets"])
                prepared.notify = attrs
            prepared.publisher = publisher_of(request)
        except Exception as exc:  # noqa: BLE001 - every refusal is answered by the view's handler
            prepared.response = _finish(view, request, view.handle_exception(exc))
        return prepared
    finally:
        signals.request_finished.send(sender=FastPublishApp)


def _validate_batch_event(view: KeyScopedView, request: Request, body: Any) -> dict[str, Any]:
    try:
        attrs = validate_notify(body)
        view.check_channels(request, attrs["targets"])
        return attrs
    except (exceptions.APIException, PublishError) as exc:
        return batch_error(exc)


def _finish(view: KeyScopedView, request: Request, response: Response) -> Response:
    response = view.finalize_response(request, response)
    response.render()
    return response


async def _publish(prepared: _Prepared) -> Response:
    view, request = prepared.view, prepared.request
    try:
        if prepared.notify is not None:
            attrs = prepared.notify
            result = await apublish(
                attrs["targets"],
                attrs["event"],
                attrs.get("data"),
                idempotency_key=attrs.get("idempotency_key"),
                publisher=prepared.publisher,
            )
            return _finish(view, request, Response(result.as_dict(), status=202))
        assert prepared.batch is not None
        valid = [(i, body) for i, body in enumerate(prepared.batch) if "error" not in body]
        answers = await apublish_many(
            [
                PublishRequest(
                    body["targets"],
                    body["event"],
                    body.get("data"),
                    idempotency_key=body.get("idempotency_key"),
                    publisher=prepared.publisher,
                )
                for _, body in valid
            ]
        )
        results: list[dict[str, Any]] = list(prepared.batch)
        for (index, _), answer in zip(valid, answers, strict=True):
            results[index] = answer.as_dict() if isinstance(answer, PublishResult) else batch_error(answer)
        if all(r.get("error", {}).get("code") == "unavailable" for r in results):
            raise Unavailable("Redis is unavailable; no event was published")
        return _finish(view, request, Response({"results": results}, status=202))
    except Exception as exc:  # noqa: BLE001 - answered by the view's handler, as in dispatch()
        return _finish(view, request, view.handle_exception(exc))


class FastPublishApp:
    """ASGI: POST /api/notify and /api/notify/batch here; everything else to `app` (Django)."""

    routes: dict[str, type[KeyScopedView]] = {"/api/notify": NotifyView, "/api/notify/batch": NotifyBatchView}

    def __init__(self, app: ASGIApp, threads: int = WORKER_THREADS) -> None:
        self.app = app
        self.worker = _Worker(threads)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        view_class = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if view_class is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            return  # the client went away
        django_request = ASGIRequest(scope, body)
        try:
            prepared: _Prepared = await self.worker.run(_prepare, view_class, django_request, scope)
            response = prepared.response or await _publish(prepared)
        finally:
            body.close()
        await self._respond(response, send)

    @staticmethod
    async def _read_body(receive: Any) -> Any:
        """The body in a spooled file, as Django's ASGIHandler.read_body keeps it."""
        body = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")  # noqa: SIM115
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body.close()
                return None
            if "body" in message:
                body.write(message["body"])
            if not message.get("more_body", False):
                break
        body.seek(0)
        return body

    @staticmethod
    async def _respond(response: Response, send: Any) -> None:
        content = response.content
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.items()
            if name.lower() != "content-length"
        ]
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": content})
