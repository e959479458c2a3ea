"""A backend's webhook receiver for the tests: a real HTTP server in its own process that
verifies each delivery with the `standardwebhooks` library, as a receiver in any language
would with its port of it.

- `POST /endpoint/<name>` {"secret"}: the secret a created endpoint was given (verify with it).
- `POST /hook/<name>`: a delivery. Verified (signature, timestamp tolerance), recorded, then
  answered 200, or what `/script/<name>` queued.
- `POST /script/<name>` {"answers": [status, …]}: the next answers, in order.
- `GET /received/<name>`: every delivery: {"id", "status", "verified", "body" | "error"}.

Run: `python -m tests.webhook_receiver PORT`.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

lock = threading.Lock()
secrets: dict[str, str] = {}
answers: dict[str, list[int]] = {}
received: dict[str, list[dict[str, Any]]] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        sys.stderr.write(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def answer(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        kind, _, name = self.path.strip("/").partition("/")
        if kind != "received":
            return self.answer(404)
        with lock:
            self.answer(200, list(received.get(name, [])))

    def do_POST(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        kind, _, name = self.path.strip("/").partition("/")
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            if kind == "endpoint":
                secrets[name] = json.loads(data)["secret"]
                return self.answer(204)
            if kind == "script":
                answers.setdefault(name, []).extend(json.loads(data)["answers"])
                return self.answer(204)
            secret = secrets.get(name)
        if kind != "hook" or secret is None:
            return self.answer(404)
        headers = {k.lower(): v for k, v in self.headers.items()}
        record: dict[str, Any] = {"id": headers.get("webhook-id")}
        try:
            record["body"] = Webhook(secret).verify(data, headers)
            record["verified"] = True
        except WebhookVerificationError as exc:
            record.update(verified=False, error=str(exc))
        with lock:
            queued = answers.get(name, [])
            status = queued.pop(0) if queued and record["verified"] else (200 if record["verified"] else 401)
            record["status"] = status
            received.setdefault(name, []).append(record)
        self.answer(status)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
