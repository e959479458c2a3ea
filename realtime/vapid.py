"""VAPID (RFC 8292): the key pair that identifies this service to push services.

A push service accepts a message for a subscription only when it is signed by the key the
browser subscribed with (the public key `GET /api/push/key` hands out), so the key must be
stable: it comes from NOTIFIER_VAPID_PRIVATE_KEY, or in the embedded mode from a file made once
per checkout (as the embedded mode's secret key is). py-vapid signs; this module only finds
the key and says what is missing.
"""

from __future__ import annotations

import base64
import functools
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from py_vapid import Vapid02

from .conf import notifier_settings

EMBEDDED_SUBJECT = "mailto:notifier@localhost"
CLAIM_LIFETIME_SECS = 12 * 3600  # RFC 8292: at most 24 h; push services refuse longer


class NotConfigured(Exception):
    """Web Push is off: no VAPID key is set."""


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_private_key() -> str:
    """A new private key as NOTIFIER_VAPID_PRIVATE_KEY takes it (base64url of the scalar)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return b64url(key.private_numbers().private_value.to_bytes(32, "big"))


def public_key_of(private_key: str) -> str:
    """The uncompressed P-256 point of `private_key`, base64url: the browser's
    `applicationServerKey`."""
    point = _vapid(private_key).public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(point)


@functools.lru_cache(maxsize=4)
def _vapid(private_key: str) -> Vapid02:
    try:
        raw = b64url_decode(private_key.strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise NotConfigured("NOTIFIER_VAPID_PRIVATE_KEY must be base64url of 32 bytes (manage.py generate_vapid_keys)")
    return Vapid02.from_raw(private_key.strip().encode())


def private_key() -> str:
    """The configured private key; NotConfigured when there is none."""
    key: str = notifier_settings.VAPID_PRIVATE_KEY
    if not key and getattr(settings, "EMBEDDED", False):
        key = _embedded_key(Path(settings.BASE_DIR) / ".dev-vapid-key")
    if not key:
        raise NotConfigured(
            "Web Push is not configured: set NOTIFIER_VAPID_PRIVATE_KEY (manage.py generate_vapid_keys)"
        )
    _vapid(key)  # refuse a malformed key here, with its name
    return key


def subject() -> str:
    configured: str = notifier_settings.VAPID_SUBJECT
    if configured:
        return configured
    if getattr(settings, "EMBEDDED", False):
        return EMBEDDED_SUBJECT
    raise NotConfigured("set NOTIFIER_VAPID_SUBJECT (mailto: or https: contact) for Web Push")


def public_key() -> str:
    return public_key_of(private_key())


def authorization(endpoint: str) -> str:
    """The `Authorization: vapid t=…, k=…` header for a push to `endpoint`: a JWT (ES256) whose
    `aud` is the endpoint's origin, `exp` 12 h ahead, `sub` the contact. One is signed per push
    service origin and reused for an hour (signing is most of a small push's CPU)."""
    parts = urlsplit(endpoint)
    audience = f"{parts.scheme}://{parts.netloc}"
    key, contact, now = private_key(), subject(), time.time()
    cached = _signed.get((audience, key, contact))
    if cached is not None and cached[0] > now:
        return cached[1]
    claims = {"aud": audience, "exp": int(now) + CLAIM_LIFETIME_SECS, "sub": contact}
    header: str = _vapid(key).sign(claims)["Authorization"]
    if len(_signed) > 1000:  # endpoints of many push services: start over rather than grow
        _signed.clear()
    _signed[(audience, key, contact)] = (now + REUSE_SECS, header)
    return header


REUSE_SECS = 3600  # a signed header is reused this long, well inside its 12 h lifetime
_signed: dict[tuple[str, str, str], tuple[float, str]] = {}


def _embedded_key(path: Path) -> str:
    """The embedded mode's key: made once per checkout, shared by concurrent processes (a
    hard link makes the first writer's file the one everybody reads)."""
    if not path.exists():
        fresh = path.with_name(f"{path.name}.{os.getpid()}")
        fresh.write_text(generate_private_key())
        fresh.chmod(0o600)
        try:
            os.link(fresh, path)
        except FileExistsError:
            pass
        finally:
            fresh.unlink()
    return path.read_text().strip()
