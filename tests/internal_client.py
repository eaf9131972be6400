"""Talking to a gateway's internal listener: Basic and Digest auth, events, metrics.

The Digest side is computed here from RFC 2617 (MD5, qop=auth), independently
of the server's library, so the tests check interoperability, not a copy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

USER, PASSWORD = "events-svc", "internal-password-0123456789"
AUTH_ENV = {"INTERNAL_AUTH_USER": USER, "INTERNAL_AUTH_PASSWORD": PASSWORD}


def basic_header(user: str = USER, password: str = PASSWORD) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_header(challenge: str, method: str, uri: str, user: str = USER,
                  password: str = PASSWORD) -> dict:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    cnonce, nc = os.urandom(8).hex(), "00000001"
    ha1 = _md5(f"{user}:{params['realm']}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    response = _md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    value = (f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
             f'uri="{uri}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}", '
             f'response="{response}", opaque="{params["opaque"]}"')
    return {"Authorization": value}


def digest_challenge(response: HTTPResponse) -> str:
    return next(v for v in response.headers.get_list("WWW-Authenticate") if v.startswith("Digest "))


async def fetch(gateway, path: str, method: str = "GET", body=None, headers: dict | None = None,
                auth: str | None = "basic") -> HTTPResponse:
    """A request to the internal listener; ``auth`` is "basic", "digest" or None."""
    client = AsyncHTTPClient()
    url = gateway.internal_base + path
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    headers = dict(headers or {})
    if auth == "basic":
        headers.update(basic_header())
    elif auth == "digest":
        first = await client.fetch(url, method=method, body=body, headers=headers, raise_error=False)
        assert first.code == 401, first.code
        headers.update(digest_header(digest_challenge(first), method, path))
    return await client.fetch(url, method=method, body=body, headers=headers, raise_error=False)


async def post_event(gateway, payload, auth: str | None = "basic") -> HTTPResponse:
    return await fetch(gateway, "/internal/events", "POST", payload, auth=auth)


async def metric_value(gateway, name: str, **labels) -> float:
    """The current value of one sample of ``/metrics`` (0 when absent)."""
    response = await fetch(gateway, "/metrics")
    assert response.code == 200
    wanted = {k: str(v) for k, v in labels.items()}
    for line in response.body.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample.partition("{")[2]))
        if all(found.get(k) == v for k, v in wanted.items()):
            return float(value)
    return 0.0


class RecordingSocket:
    """A python-socketio client that records every server->client event it gets."""

    EVENTS = ("message:new", "message:edit", "message:delete", "receipt:delivered", "receipt:read",
              "typing:update", "chat:updated", "presence:update", "error")

    def __init__(self):
        import socketio

        self.client = socketio.AsyncClient(reconnection=False)
        self.received: list[tuple[str, object]] = []
        self.disconnected = asyncio.Event()
        for event in self.EVENTS:
            self.client.on(event, self._recorder(event))
        self.client.on("disconnect", lambda *args: self.disconnected.set())

    def _recorder(self, event):
        def record(data=None, *rest):
            self.received.append((event, data))
        return record

    async def connect(self, node, token: str) -> "RecordingSocket":
        from harness import ORIGIN

        await self.client.connect(node.base, auth={"token": token}, headers={"Origin": ORIGIN},
                                  transports=["websocket"], wait_timeout=5)
        return self

    def got(self, event: str, marker=None) -> list:
        """Payloads of ``event`` received (those whose data["marker"] == marker, if given)."""
        return [data for name, data in self.received if name == event
                and (marker is None or (isinstance(data, dict) and data.get("marker") == marker))]

    async def wait_for(self, event: str, marker=None, timeout: float = 5.0) -> list:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.got(event, marker):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {event} {marker!r}; got {self.received}")
            await asyncio.sleep(0.02)
        return self.got(event, marker)

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()


async def open_sockets(*node_tokens) -> list[RecordingSocket]:
    return [await RecordingSocket().connect(node, token) for node, token in node_tokens]


def running_nodes(redis_server, stub_upstreams, env: dict | None = None, count: int = 2):
    """Generator for module fixtures: ``count`` gateways on one Redis, with internal credentials."""
    from harness import GatewayProcess

    full_env = {**stub_upstreams.env(), **AUTH_ENV, "REDIS_URL": redis_server.url, **(env or {})}
    started = [GatewayProcess(full_env).start() for _ in range(count)]
    yield started
    for node in started:
        node.stop()
