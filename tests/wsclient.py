"""A small test client over the `websockets` library, speaking notifier's protocol."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

RECV_TIMEOUT_SECS = 10


class Client:
    # Clients not yet closed, so a test that fails half-way does not leave its socket to the
    # garbage collector (whose ResourceWarning would then fail some later, unrelated test).
    open_clients: set[Client] = set()

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}
        Client.open_clients.add(self)

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        client = cls(await websockets.connect(url, **kwargs))
        client.hello = await client.recv()
        assert client.hello["type"] == "hello", client.hello
        return client

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def recv(self, timeout: float = RECV_TIMEOUT_SECS) -> dict[str, Any]:
        """The next frame other than a server ping."""
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if frame.get("type") != "ping":
                return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv()

    async def subscribe(self, channel: str, **fields: Any) -> dict[str, Any]:
        reply = await self.request({"op": "subscribe", "channel": channel, **fields})
        assert reply["type"] == "subscribed", reply
        return reply

    async def events(self, count: int, timeout: float = RECV_TIMEOUT_SECS) -> list[dict[str, Any]]:
        frames = [await self.recv(timeout) for _ in range(count)]
        assert all(f["type"] == "event" for f in frames), frames
        return frames

    async def nothing_within(self, seconds: float) -> bool:
        """True if no frame (other than pings) arrives within `seconds`."""
        try:
            frame = await self.recv(timeout=seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        Client.open_clients.discard(self)
        await self.ws.close()

    @classmethod
    async def close_leftovers(cls) -> None:
        """Close the clients a test left open (it failed before its own close)."""
        for client in list(cls.open_clients):
            try:
                await asyncio.wait_for(client.close(), 5)
            except (TimeoutError, RuntimeError, OSError):
                client.ws.transport.abort()  # its loop is gone or the peer hangs: drop the socket


async def follow(
    channel: str,
    first_url: str,
    failover_url: str,
    total: int,
    received: list[dict[str, Any]],
    close_codes: list[int] | None = None,
) -> None:
    """Receive `total` events of `channel`; when the server goes away, resume on `failover_url`
    from the last offset received, as a real client would. Close codes seen go to `close_codes`."""
    client = await Client.connect(first_url)
    await client.subscribe(channel)
    while len(received) < total:
        try:
            received.extend(await client.events(1, timeout=30))
        except websockets.ConnectionClosed as closed:
            if close_codes is not None and closed.rcvd is not None:
                close_codes.append(closed.rcvd.code)
            last = received[-1] if received else None
            client = await Client.connect(failover_url)
            since = {"offset": last["offset"], "epoch": last["epoch"]} if last else {"offset": 0, "epoch": ""}
            assert (await client.subscribe(channel, since=since))["recovered"] is True
    await client.close()
