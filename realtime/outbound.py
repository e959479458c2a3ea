"""Requests this service makes to URLs its users give it (push endpoints, webhooks), made safe.

A push endpoint or webhook URL is chosen by whoever registers it, so a request to it must not
become a way into the network the service runs in (SSRF): https only, no redirects, a small
answer, and never a loopback, private, link-local, shared or metadata address. The address is
checked where it matters, on the socket once connected (`getpeername`), so a name that
resolved to a public address when registered and to 127.0.0.1 now (DNS rebinding) is still
refused, and nothing is sent to it. NOTIFIER_OUTBOUND_ALLOW_PRIVATE lifts all of this, for
tests and intranets.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .conf import notifier_settings

MAX_ANSWER_BYTES = 16 * 1024  # what is read of an answer; the rest is dropped
MAX_URL_LENGTH = 2048


class Refused(Exception):
    """The URL or the address it reached is not allowed; nothing was sent."""


class Failed(Exception):
    """No answer: connection refused or reset, TLS failure, timeout. Worth a retry."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # at most MAX_ANSWER_BYTES


def allow_private() -> bool:
    return bool(notifier_settings.OUTBOUND_ALLOW_PRIVATE)


def check_url(url: str) -> str:
    """`url` if it may be called (https, a host, no credentials; a literal address must be
    public); Refused saying why. Names are checked once connected, by `post`."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise Refused(f"must be a URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a URL: {exc}") from None
    schemes = {"https", "http"} if allow_private() else {"https"}
    if parts.scheme not in schemes:
        raise Refused("must be an https:// URL" if not allow_private() else "must be an http(s):// URL")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise Refused("must name a host, without credentials")
    if port == 0:
        raise Refused("port 0 cannot be reached")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        if parts.hostname.rstrip(".").lower() == "localhost" or parts.hostname.endswith(".localhost"):
            _check_address(ipaddress.ip_address("127.0.0.1"))
    else:
        _check_address(literal)
    return url


def _check_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if not allow_private() and not _is_public(str(address)):
        raise Refused(f"{address} is not a public address (loopback, private, link-local or reserved)")


def _is_public(text: str) -> bool:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # no IPv6 zone
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _CheckedPeer:
    """A connection that refuses, once connected and before sending anything, a peer whose
    address `_check_address` refuses."""

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        try:
            _check_address(ipaddress.ip_address(sock.getpeername()[0]))
        except Refused:
            sock.close()
            raise
        return sock


class _CheckedHTTPConnection(_CheckedPeer, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedPeer, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def session() -> requests.Session:
    """A session whose connections check their peer; no proxies from the environment (the
    peer would be the proxy)."""
    made = requests.Session()
    made.trust_env = False
    adapter = _CheckedAdapter(max_retries=0)
    made.mount("https://", adapter)
    made.mount("http://", adapter)
    return made


def post(
    client: requests.Session, url: str, body: bytes, headers: dict[str, str], timeout: float | None = None
) -> Answer:
    """POST `body` to `url` (checked), not following redirects; the answer, its body cut at
    MAX_ANSWER_BYTES. Refused when the URL or its address is not allowed, Failed when no
    answer came."""
    check_url(url)
    secs = timeout if timeout is not None else float(notifier_settings.OUTBOUND_TIMEOUT_SECS)
    try:
        with client.post(url, data=body, headers=headers, timeout=secs, allow_redirects=False, stream=True) as answer:
            content = answer.raw.read(MAX_ANSWER_BYTES, decode_content=True) or b""
            return Answer(answer.status_code, {k.lower(): v for k, v in answer.headers.items()}, content)
    except Refused:
        raise
    except (requests.RequestException, OSError) as exc:
        raise Failed(f"{type(exc).__name__}: {exc}") from exc
