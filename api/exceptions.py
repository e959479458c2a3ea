"""API errors: every one answers JSON `{"code", "message", "details"}` with a stable code."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from realtime.publish import PublishError

logger = logging.getLogger(__name__)


class InvalidApiKey(exceptions.AuthenticationFailed):
    default_code = "invalid_api_key"
    default_detail = "invalid API key"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "payload too large"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "unavailable"
    default_detail = "the service is temporarily unavailable"


# DRF's default codes, renamed where ours are clearer.
_CODES = {
    "not_authenticated": "missing_api_key",
    "authentication_failed": "invalid_api_key",
    "parse_error": "invalid_json",
    "permission_denied": "forbidden",
    "invalid": "invalid",
}


def payload_too_large() -> PayloadTooLarge:
    """The refusal of a request body over Django's DATA_UPLOAD_MAX_MEMORY_SIZE."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    error = PayloadTooLarge(f"request body is over {limit} bytes")
    error.notifier_details = {"limit": limit}  # type: ignore[attr-defined]
    return error


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details or {}}


def from_publish_error(exc: PublishError) -> exceptions.APIException:
    """The API exception for a refused publish."""
    cls: type[exceptions.APIException] = {
        "payload_too_large": PayloadTooLarge,
        "unavailable": ServiceUnavailable,
        "not_replicated": ServiceUnavailable,
    }.get(exc.code, exceptions.ValidationError)
    error = (
        cls(exc.message, code=exc.code)
        if cls is not exceptions.ValidationError
        else exceptions.ValidationError({"non_field_errors": [exc.message]})
    )
    error.notifier_details = exc.details  # type: ignore[attr-defined]
    return error


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, PublishError):
        exc = from_publish_error(exc)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, DatabaseError):
        logger.warning("database error: %s: %s", type(exc).__name__, exc)
        exc = ServiceUnavailable("the database is unavailable; retry")
    if isinstance(exc, RequestDataTooBig):
        exc = payload_too_large()
    # Imported here: rest_framework.views imports our authentication class at import time.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled API error", exc_info=exc)
        return Response(error_body("internal", "internal server error"), status=500)
    assert isinstance(exc, exceptions.APIException)
    response.data = _body_of(exc)
    return response


def batch_error(exc: Exception) -> dict[str, Any]:
    """A refused event of a batch: `{"error": {"code", "message", "details"}}` in its slot."""
    response = exception_handler(exc, {})
    assert response is not None
    error = response.data
    return {"error": {"code": error["code"], "message": error["message"], "details": error["details"]}}


def nothing_published(results: list[dict[str, Any]]) -> bool:
    """Whether every event of a batch failed for want of Redis, none of them stored: the batch
    then answers 503 as a whole. An event stored but not sent (`details.stored`) will be
    delivered, so its slot, with its position, must reach the client."""
    return all(
        r.get("error", {}).get("code") == "unavailable" and not r["error"].get("details", {}).get("stored")
        for r in results
    )


def _body_of(exc: exceptions.APIException) -> dict[str, Any]:
    if isinstance(exc, exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        extra = getattr(exc, "notifier_details", {})
        message = _first_message(details)
        return error_body("invalid", message, {"fields": details, **extra} if details else extra)
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else exc.default_code
    return error_body(_CODES.get(str(code), str(code)), str(exc.detail), getattr(exc, "notifier_details", {}))


def _first_message(detail: Any, path: str = "") -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            return _first_message(value, f"{path}.{name}".strip(".") if name else path)
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], path)
    return f"{path}: {detail}" if path else str(detail)


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "not found"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("internal", "internal server error"), status=500)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, RequestDataTooBig):
        error = payload_too_large()
        return JsonResponse(_body_of(error), status=error.status_code)
    return JsonResponse(error_body("bad_request", "bad request"), status=400)
