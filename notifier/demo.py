"""The demo pages: what a newcomer opens first, served by the service itself.

- `/demo/`: connect (optionally with a token), subscribe to channels, watch events arrive with
  their offsets and the connection's state, and publish through the HTTP API with an API key.
- `/demo/chat/<room>/`: a chat room on the `chat:` namespace, whose subscribers publish from
  the browser (`client.publish`); open it in two tabs and they talk live.
- `/demo/inbox/`: a user's stored notifications (`client.inbox`): the bell with its unread
  badge, the list, mark read, mark all read, archive; every tab of the user stays in step.

The pages are plain templates (inline CSS, no external assets) that import the browser client
from /static/notifier.js, as a user's page would. The WebSocket URL is derived in the page from
its own location, so the pages work behind any host name or TLS proxy.
"""

from __future__ import annotations

import re

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, re_path
from django.views.generic import RedirectView

from realtime.channels import MAX_CHANNEL_LENGTH

CHAT_NAMESPACE = "chat"
DEFAULT_ROOM = "lobby"
# A room is the name part of `chat:<room>`: the channel-name characters, within the 128 limit.
ROOM_PATTERN = rf"[A-Za-z0-9_.\-@=]{{1,{MAX_CHANNEL_LENGTH - len(CHAT_NAMESPACE) - 1}}}"
_ROOM_RE = re.compile(ROOM_PATTERN)


def demo(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/index.html", {"page": "events", "default_room": DEFAULT_ROOM})


def chat(request: HttpRequest, room: str) -> HttpResponse:
    if not _ROOM_RE.fullmatch(room):
        raise Http404("no such room")
    context = {"page": "chat", "default_room": DEFAULT_ROOM, "room": room, "channel": f"{CHAT_NAMESPACE}:{room}"}
    return render(request, "demo/chat.html", context)


def inbox(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/inbox.html", {"page": "inbox", "default_room": DEFAULT_ROOM})


urlpatterns = [
    path("demo/", demo, name="demo"),
    path("demo/inbox/", inbox, name="demo-inbox"),
    path("demo/chat/", RedirectView.as_view(url=f"/demo/chat/{DEFAULT_ROOM}/"), name="demo-chat-default"),
    re_path(rf"^demo/chat/(?P<room>{ROOM_PATTERN})/$", chat, name="demo-chat"),
]
