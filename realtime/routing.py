from __future__ import annotations

from django.urls import path

from .consumers import NotifierConsumer

websocket_urlpatterns = [path("ws/", NotifierConsumer.as_asgi())]
