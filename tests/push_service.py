"""A stand-in push service (RFC 8030) for the tests: a real HTTP server in its own process
that checks what a real one checks and records what it got.

- `POST /subscribe/<name>` {"application_server_key"}: what a browser's
  `pushManager.subscribe()` would give: {"endpoint", "keys": {"p256dh", "auth"}}. The stand-in
  keeps the private half, as the browser does.
- `POST /push/<name>`: a push. The VAPID header (RFC 8292) must carry a JWT signed (ES256) by the
  application server key the subscription was made with, `aud` the endpoint's origin, `exp`
  within 24 h, `sub` a mailto: or https: contact; the body must decrypt (aes128gcm, RFC 8291)
  with the subscription's keys. Answers 201, or what `/script/<name>` queued.
- `POST /script/<name>` {"answers": [[status, {headers}], …]}: the next answers, in order.
- `GET /received/<name>`: every push, in order: {"status", "payload" | "error", "claims",
  "ttl", "urgency", "at"}.
- `GET /stats`: {"accepted", "first_at", "last_at"} over every subscription (for the bench).

Run: `python -m tests.push_service PORT`.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Subscription:
    def __init__(self, server_key: str) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.server_key = server_key
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.received: list[dict[str, Any]] = []

    def public(self) -> str:
        return b64(
            self.private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )


subscriptions: dict[str, Subscription] = {}
lock = threading.Lock()
stats: dict[str, Any] = {"accepted": 0, "first_at": None, "last_at": None}


def check_vapid(header: str, subscription: Subscription, origin: str) -> dict[str, Any]:
    """The JWT's claims once every RFC 8292 check passed; ValueError saying which failed."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError(f"Authorization scheme {scheme!r}, not vapid")
    fields = dict(part.strip().split("=", 1) for part in params.split(",") if "=" in part)
    if fields.get("k") != subscription.server_key:
        raise ValueError("k is not the application server key the subscription was made with")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(fields["k"]))
    try:
        claims: dict[str, Any] = jwt.decode(fields.get("t", ""), key, algorithms=["ES256"], audience=origin)
    except jwt.PyJWTError as exc:
        raise ValueError(f"JWT refused: {exc}") from None
    if claims["exp"] > time.time() + 24 * 3600:
        raise ValueError("exp is more than 24 hours ahead")
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        raise ValueError("sub is not a mailto: or https: contact")
    return claims


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        sys.stderr.write(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        kind, _, name = self.path.strip("/").partition("/")
        if kind == "stats":
            with lock:
                return self.answer(200, dict(stats))
        with lock:
            found = subscriptions.get(name)
            received = list(found.received) if found else None
        if kind != "received" or received is None:
            return self.answer(404, {"error": "no such subscription"})
        self.answer(200, received)

    def do_POST(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        kind, _, name = self.path.strip("/").partition("/")
        data = self.body()
        if kind == "subscribe":
            subscription = Subscription(json.loads(data)["application_server_key"])
            with lock:
                subscriptions[name] = subscription
            endpoint = f"http://{self.headers['Host']}/push/{name}"
            return self.answer(
                201, {"endpoint": endpoint, "keys": {"p256dh": subscription.public(), "auth": b64(subscription.auth)}}
            )
        with lock:
            found = subscriptions.get(name)
        if found is None:
            return self.answer(404, {"error": "no such subscription"})
        if kind == "script":
            with lock:
                found.answers.extend((status, headers) for status, headers in json.loads(data)["answers"])
            return self.answer(204)
        if kind != "push":
            return self.answer(404, {"error": "unknown path"})
        record: dict[str, Any] = {
            "ttl": self.headers.get("TTL"),
            "urgency": self.headers.get("Urgency"),
            "at": time.time(),
        }
        try:
            record["claims"] = check_vapid(
                self.headers.get("Authorization", ""), found, f"http://{self.headers['Host']}"
            )
            if self.headers.get("Content-Encoding") != "aes128gcm":
                raise ValueError(f"Content-Encoding {self.headers.get('Content-Encoding')!r}")
            if len(data) > 4096:
                raise ValueError(f"body of {len(data)} bytes, over 4096")
            plain = http_ece.decrypt(data, private_key=found.private, auth_secret=found.auth, version="aes128gcm")
            record["payload"] = json.loads(plain)
        except (ValueError, KeyError) as exc:
            record.update(status=400, error=str(exc))
            with lock:
                found.received.append(record)
            return self.answer(400, {"error": str(exc)})
        with lock:
            status, headers = found.answers.pop(0) if found.answers else (201, {})
            record["status"] = status
            found.received.append(record)
            if 200 <= status < 300:
                stats["accepted"] += 1
                stats["first_at"] = stats["first_at"] or record["at"]
                stats["last_at"] = record["at"]
        self.answer(status, None, headers)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
