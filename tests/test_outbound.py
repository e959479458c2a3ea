"""Outbound requests (realtime/outbound.py) refuse what could reach into the service's own
network: tested against real sockets, including a name that resolves to a loopback address
(the check is on the connected peer, so DNS cannot route around it)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from realtime import outbound


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def do_POST(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Recorder.seen.append(self.path)
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"x" * (outbound.MAX_ANSWER_BYTES * 4)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def receiver() -> Iterator[int]:
    Recorder.seen = []
    server = ThreadingHTTPServer(("0.0.0.0", 0), Recorder)  # noqa: S104 - reached by the machine's own name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def private_allowed(settings: Any) -> None:
    settings.NOTIFIER = {**settings.NOTIFIER, "OUTBOUND_ALLOW_PRIVATE": True}


@pytest.mark.parametrize(
    "url",
    [
        "http://push.example.com/x",  # not https
        "ftp://push.example.com/x",
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://192.168.0.1/x",
        "https://172.16.0.1/x",
        "https://100.64.0.1/x",  # shared address space
        "https://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://localhost/x",
        "https://user:secret@push.example.com/x",
        "https://push.example.com:0/x",
        "https://" + "a" * 2050 + ".example/x",
        "not a url",
    ],
)
def test_urls_that_could_reach_inside_are_refused(url: str) -> None:
    with pytest.raises(outbound.Refused):
        outbound.check_url(url)


def test_public_https_urls_pass() -> None:
    assert outbound.check_url("https://fcm.googleapis.com/fcm/send/abc") == "https://fcm.googleapis.com/fcm/send/abc"
    assert outbound.check_url("https://[2606:4700::1111]/x")


def test_a_name_that_resolves_to_loopback_is_refused_once_connected(receiver: int) -> None:
    name = socket.gethostname()
    address = socket.getaddrinfo(name, receiver, type=socket.SOCK_STREAM)[0][4][0]
    assert not outbound._is_public(address), f"{name} must resolve to a non-public address here, not {address}"
    with pytest.raises(outbound.Refused, match="not a public address"):
        outbound.post(outbound.session(), f"https://{name}:{receiver}/hook", b"{}", {})
    assert Recorder.seen == []  # nothing was sent


def test_with_private_allowed_redirects_are_not_followed_and_answers_are_cut(
    receiver: int, private_allowed: None
) -> None:
    client = outbound.session()
    moved = outbound.post(client, f"http://127.0.0.1:{receiver}/redirect", b"{}", {})
    assert moved.status == 307 and Recorder.seen == ["/redirect"]
    answer = outbound.post(client, f"http://127.0.0.1:{receiver}/big", b"{}", {})
    assert answer.status == 200 and len(answer.body) == outbound.MAX_ANSWER_BYTES


def test_no_answer_is_a_failure_worth_retrying(private_allowed: None) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(outbound.Failed):
        outbound.post(outbound.session(), f"http://127.0.0.1:{port}/", b"{}", {}, timeout=2)
