"""Webhook endpoints over the API (DESIGN §11), for backends with an API key that has the
`webhooks` scope: create (the secret is shown once), list, delete, rotate the secret."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import authentication, exceptions, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime import webhooks
from realtime.models import WebhookEndpoint
from realtime.notify import StrictCharField, StrictObjectSerializer

from .authentication import ApiKeyAuthentication
from .permissions import HasScope
from .views import ERRORS


class EndpointBody(StrictObjectSerializer):
    url = StrictCharField(max_length=2048)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=webhooks.TYPES), allow_empty=False, max_length=len(webhooks.TYPES)
    )


class WebhooksView(APIView):
    authentication_classes: Sequence[type[authentication.BaseAuthentication]] = [ApiKeyAuthentication]
    permission_classes: Sequence[Any] = [IsAuthenticated, HasScope]
    required_scope = "webhooks"


class EndpointsView(WebhooksView):
    @extend_schema(responses={200: {"type": "object"}, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response({"webhooks": [webhooks.describe(e) for e in WebhookEndpoint.objects.order_by("id")]})

    @extend_schema(request=EndpointBody, responses={201: {"type": "object"}, **ERRORS})
    def post(self, request: Request) -> Response:
        body = EndpointBody(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            endpoint, secret = webhooks.create(body.validated_data["url"], body.validated_data["events"])
        except webhooks.InvalidEndpoint as exc:
            raise exceptions.ValidationError(str(exc)) from None
        answer = {**webhooks.describe(endpoint), "secret": secret}
        return Response(answer, status=status.HTTP_201_CREATED)


class EndpointView(WebhooksView):
    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, endpoint_id: int) -> Response:
        deleted, _ = WebhookEndpoint.objects.filter(pk=endpoint_id).delete()
        webhooks.forget_wanted()
        if not deleted:
            raise exceptions.NotFound("no such webhook endpoint")
        return Response(status=status.HTTP_204_NO_CONTENT)


class RotateView(WebhooksView):
    @extend_schema(request=None, responses={200: {"type": "object"}, **ERRORS})
    def post(self, request: Request, endpoint_id: int) -> Response:
        secret = webhooks.rotate(endpoint_id)
        if secret is None:
            raise exceptions.NotFound("no such webhook endpoint")
        return Response({"secret": secret})
