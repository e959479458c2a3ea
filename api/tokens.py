"""POST /api/tokens: the rules both doors apply, the event-loop route (api/fast.py, what
server processes answer with) and the DRF view (api/views.py: the test client, the schema).
The key holds the `tokens` scope (403), the body is valid (400), and the channels the token
grants are within the key's patterns (403)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions

from realtime.channels import personal_channel
from realtime.notify import quick_user_id
from realtime.tokens import mint_connection_token, mint_subscription_token

from .models import ApiKey
from .permissions import check_key_grants
from .serializers import DEFAULT_TOKEN_LIFETIME_SECS, MAX_TOKEN_LIFETIME_SECS, TokenRequestSerializer

SCOPE = "tokens"


def mint(key: ApiKey, body: Any, body_error: exceptions.APIException | None = None) -> dict[str, Any]:
    """The 201 answer `{"token", "expires_at"}` for `key`; raises the refusal otherwise
    (`body_error`: why the body could not be read, answered once the scope is checked)."""
    if not key.has_scope(SCOPE):
        raise exceptions.PermissionDenied(f"this API key lacks the {SCOPE!r} scope")
    if body_error is not None:
        raise body_error
    attrs = quick_token_attrs(body)
    if attrs is None:
        serializer = TokenRequestSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        attrs = dict(serializer.validated_data)
    if "channel" in attrs:
        # Grants this one channel to a connection already authenticated as the user.
        check_key_grants(key, [attrs["channel"]])
        token, expires_at = mint_subscription_token(attrs["user"], attrs["channel"], attrs["expires_in"])
    else:
        # A connection token authenticates as the user, which opens the user's personal
        # channel: the key must cover it too.
        check_key_grants(key, [personal_channel(attrs["user"]), *attrs.get("channels", [])])
        token, expires_at = mint_connection_token(attrs["user"], attrs.get("channels"), attrs["expires_in"])
    return {"token": token, "expires_at": expires_at}


def quick_token_attrs(body: Any) -> dict[str, Any] | None:
    """TokenRequestSerializer's validated data for the usual body (`user`, and `expires_in`),
    or None: then the serializer decides, and words any error. DRF's field machinery costs
    more than the rest of minting (tests/test_tokens.py compares both on generated bodies)."""
    if type(body) is not dict or not {"user"} <= body.keys() <= {"user", "expires_in"}:
        return None
    user = quick_user_id(body["user"])
    expires_in = body.get("expires_in", DEFAULT_TOKEN_LIFETIME_SECS)
    if user is None or type(expires_in) is not int or not 1 <= expires_in <= MAX_TOKEN_LIFETIME_SECS:
        return None
    return {"user": user, "expires_in": expires_in}
