"""The inbox API for end users (DESIGN §10): list, counts, mark, delete their own notifications.

The caller is a user, not a backend: `Authorization: Bearer <connection token>` (the token the
browser already holds for its socket), or the Django session of a page on the same site. Each
change is followed by one `inbox.changed` event on the user's channel
(`realtime.publish.apublish_inbox_change`), so their other tabs and devices update at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import authentication, exceptions, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime import inbox, webhooks
from realtime.bridge import run_sync
from realtime.channels import personal_channel
from realtime.notify import USER_ID_RE, CategoryField, StrictBooleanField
from realtime.publish import aerase_inbox, apublish_inbox_change
from realtime.tokens import InvalidToken, TokenExpired, decode_connection_token

from .authentication import ApiKeyAuthentication, Caller, Publisher
from .permissions import HasScope, check_key_channels
from .serializers import (
    InboxCountsSerializer,
    InboxErasedSerializer,
    InboxMarkedSerializer,
    InboxPageSerializer,
    InboxPreferencesSerializer,
)
from .views import ERRORS

logger = logging.getLogger(__name__)

MAX_IDS = 1000  # ids in one mark request
MAX_CATEGORIES = 100  # in one preferences document


class InboxUser(Caller):
    """The end user an inbox request acts for."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id


class ConnectionTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <connection token>`: the user the token was minted for."""

    def authenticate(self, request: Request) -> tuple[InboxUser, None] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        return InboxUser(token_user(header)), None

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


def token_user(header: str) -> str:
    """The user of an `Authorization: Bearer <connection token>` header (both doors use this)."""
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer" or not token.strip():
        raise exceptions.AuthenticationFailed("use 'Authorization: Bearer <connection token>'", "invalid_token")
    try:
        return decode_connection_token(token.strip()).user
    except TokenExpired:
        raise exceptions.AuthenticationFailed("connection token expired", "token_expired") from None
    except InvalidToken as exc:
        raise exceptions.AuthenticationFailed(str(exc), "invalid_token") from None


def list_query(params: dict[str, str]) -> dict[str, Any]:
    """`GET /api/inbox`'s query, validated (400 otherwise)."""
    query = ListQuery(data=params)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


def page_answer(found: inbox.Page) -> dict[str, Any]:
    return {"notifications": found.notifications, "next": found.next, "counts": found.counts}


class DjangoSessionAuthentication(authentication.SessionAuthentication):
    """The logged-in Django user of a page on the same site (CSRF-checked), as the WebSocket
    takes it: the user id is the primary key."""

    def authenticate(self, request: Request) -> tuple[InboxUser, None] | None:
        found = super().authenticate(request)
        if found is None:
            return None
        return InboxUser(str(found[0].pk)), None


class InboxView(APIView):
    """An end user's own inbox (`/api/inbox…`)."""

    authentication_classes: Sequence[type[authentication.BaseAuthentication]] = [
        ConnectionTokenAuthentication,
        DjangoSessionAuthentication,
    ]
    permission_classes: Sequence[Any] = [IsAuthenticated]

    def user_id(self, request: Request) -> str:
        user = request.user
        assert isinstance(user, InboxUser)
        return user.user_id


class ForUser:
    """A backend acting for the user of the path (`/api/users/<user>/inbox…`): an API key with
    the `users` scope whose channel patterns cover `user:<id>`."""

    authentication_classes: Sequence[type[authentication.BaseAuthentication]] = [ApiKeyAuthentication]
    permission_classes: Sequence[Any] = [IsAuthenticated, HasScope]
    required_scope = "users"
    kwargs: dict[str, Any]

    def user_id(self, request: Request) -> str:
        user = self.kwargs["user"]
        if not USER_ID_RE.fullmatch(user):
            raise exceptions.ValidationError({"user": ["must be a user id: 1-64 ASCII letters, digits or _ . - @ ="]})
        publisher = request.user
        assert isinstance(publisher, Publisher)
        check_key_channels(publisher.key, [personal_channel(user)])
        return str(user)


class CursorField(serializers.CharField):
    """A page's `next`, as a later request gives it back: the row id it stands for."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=64, trim_whitespace=False, **kwargs)

    def run_validation(self, data: Any = serializers.empty) -> Any:
        cursor = super().run_validation(data)  # a string within max_length
        try:
            return inbox.decode_cursor(cursor)
        except inbox.BadCursor as exc:
            raise serializers.ValidationError(str(exc)) from None


class ListQuery(serializers.Serializer):
    status = serializers.ChoiceField(choices=inbox.STATUSES, required=False)
    category = CategoryField(required=False)
    limit = serializers.IntegerField(min_value=1, max_value=inbox.MAX_PAGE, default=20)
    cursor = CursorField(required=False)


class MarkRequest(serializers.Serializer):
    ids = serializers.ListField(
        child=serializers.CharField(max_length=64, trim_whitespace=False), required=False, max_length=MAX_IDS
    )
    all = StrictBooleanField(required=False, default=False)
    category = CategoryField(required=False)
    mark_as = serializers.ChoiceField(choices=inbox.MARKS)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and "as" in data:  # `as` is a Python keyword
            data = {**{k: v for k, v in data.items() if k != "as"}, "mark_as": data["as"]}
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("ids" in attrs) == attrs["all"]:
            raise serializers.ValidationError('give either "ids" or "all": true')
        if attrs["all"] and attrs["mark_as"] not in inbox.MARKS_FOR_ALL:
            raise serializers.ValidationError({"as": [f"with all, one of {', '.join(inbox.MARKS_FOR_ALL)}"]})
        if "category" in attrs and not attrs["all"]:
            raise serializers.ValidationError({"category": ["only with all"]})
        return attrs


class NotificationsView(InboxView):
    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=list(inbox.STATUSES), description="default: all but archived"),
            OpenApiParameter("category", str),
            OpenApiParameter("limit", int, description=f"1 to {inbox.MAX_PAGE} (default 20)"),
            OpenApiParameter("cursor", str, description="`next` of the previous page"),
        ],
        responses={200: InboxPageSerializer, **ERRORS},
    )
    def get(self, request: Request, **_: str) -> Response:
        attrs = list_query(request.query_params.dict())
        user = self.user_id(request)
        found = inbox.page(user, attrs.get("status"), attrs.get("category"), attrs["limit"], attrs.get("cursor"))
        return Response(page_answer(found))


class CountsView(InboxView):
    @extend_schema(responses={200: InboxCountsSerializer, **ERRORS})
    def get(self, request: Request, **_: str) -> Response:
        user = self.user_id(request)
        return Response(inbox.counts_of([user])[user])


class MarkView(InboxView):
    @extend_schema(request=MarkRequest, responses={200: InboxMarkedSerializer, **ERRORS})
    def post(self, request: Request, **_: str) -> Response:
        body = MarkRequest(data=request.data)
        body.is_valid(raise_exception=True)
        attrs = body.validated_data
        user = self.user_id(request)
        ids = None if attrs["all"] else attrs["ids"]
        updated, counts = inbox.mark(user, attrs["mark_as"], ids, attrs.get("category"))
        run_sync(apublish_inbox_change, user, "marked", ids, counts, attrs["mark_as"])
        if attrs["mark_as"] == "read" and updated:
            tell_backend_read(user, ids)
        return Response({"updated": updated, "counts": counts})


def tell_backend_read(user: str, ids: list[str] | None) -> None:
    """`inbox.read` webhooks: the ids marked read (or all). The mark is committed already: a
    failure to queue them is logged, not answered."""
    try:
        webhooks.emit("inbox.read", {"user": user, "ids": ids} if ids is not None else {"user": user, "all": True})
    except DatabaseError as exc:
        logger.warning("inbox.read webhooks not queued: %s", exc)


class NotificationView(InboxView):
    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, notification_id: str, **_: str) -> Response:
        user = self.user_id(request)
        counts = inbox.delete(user, notification_id)
        if counts is None:
            raise exceptions.NotFound("no such notification")
        run_sync(apublish_inbox_change, user, "deleted", [notification_id], counts)
        return Response(status=status.HTTP_204_NO_CONTENT)


class Choice(serializers.Serializer):
    inbox = StrictBooleanField(required=False, default=True)
    push = StrictBooleanField(required=False, default=True)


class PreferencesBody(serializers.Serializer):
    categories = serializers.DictField(child=Choice())

    def validate_categories(self, categories: dict[str, Any]) -> dict[str, Any]:
        if len(categories) > MAX_CATEGORIES:
            raise serializers.ValidationError(f"at most {MAX_CATEGORIES} categories")
        for category in categories:
            CategoryField().run_validation(category)
        return categories


class PreferencesView(InboxView):
    @extend_schema(responses={200: InboxPreferencesSerializer, **ERRORS})
    def get(self, request: Request, **_: str) -> Response:
        return Response({"categories": inbox.preferences(self.user_id(request))})

    @extend_schema(request=PreferencesBody, responses={200: InboxPreferencesSerializer, **ERRORS})
    def put(self, request: Request, **_: str) -> Response:
        body = PreferencesBody(data=request.data)
        body.is_valid(raise_exception=True)
        return Response({"categories": inbox.set_preferences(self.user_id(request), body.validated_data["categories"])})


class UserNotificationsView(ForUser, NotificationsView):
    @extend_schema(operation_id="api_users_inbox_erase", responses={200: InboxErasedSerializer, **ERRORS})
    def delete(self, request: Request, **_: str) -> Response:
        """Erase the user's whole inbox, preferences and channel history (data protection)."""
        return Response({"deleted": run_sync(aerase_inbox, self.user_id(request))})


class UserCountsView(ForUser, CountsView):
    pass


class UserMarkView(ForUser, MarkView):
    pass


class UserNotificationView(ForUser, NotificationView):
    pass


class UserPreferencesView(ForUser, PreferencesView):
    pass
