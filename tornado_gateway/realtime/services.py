"""Upstream calls the Socket.IO events make to the chats and messages services.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import logging
import os
import time
from urllib.parse import quote

from tornado import httputil
from tornado.httpclient import HTTPClientError

from tornado_gateway import metrics
from tornado_gateway.codec import JSONRefused, dumps_bytes, loads
from tornado_gateway.edge.paths import PathError, resolve
from tornado_gateway.realtime.payloads import EventError
from tornado_gateway.edge.identity import Identity
from tornado_gateway.parts import GatewayParts
from tornado_gateway.upstream.client import PooledHTTPClient
from tornado_gateway.upstream.forward import ForwardRequest
from typing import Any, Awaitable

log = logging.getLogger("tornado_gateway.realtime")
_CODE_OF_STATUS = {401: "INVALID_TOKEN", 403: "FORBIDDEN", 404: "NOT_FOUND", 429: "RATE_LIMITED"}
MEMBERSHIP_CACHE_MAX = 100_000


class ChatServices:
    """Chats and messages upstream calls on behalf of a socket's identity."""

    def __init__(self, gateway: GatewayParts) -> None:
        self.gateway = gateway
        self.routes = gateway.settings.routes
        self.membership_ttl = gateway.settings.membership_cache_ttl
        self._members: dict[tuple[str, str], float] = {}

    @property
    def http_client(self) -> PooledHTTPClient:
        return self.gateway.http_client

    # -- the calls of SPEC §5 -------------------------------------------------

    async def create_chat(self, identity: Identity, body: dict) -> dict:
        data = await self.call("POST", "/api/chats", identity, body)
        return _unwrap(data, "chat")

    async def check_member(self, identity: Identity, chat_id: str) -> None:
        """2xx from what ``GET /api/chats/{chatId}`` reaches means a member (cached briefly)."""
        key = (identity.user_id, chat_id)
        now = time.monotonic()
        expires = self._members.get(key)
        if expires is not None and expires > now:
            return
        await self.call("GET", f"/api/chats/{quote(chat_id)}", identity, batched=True)
        if len(self._members) >= MEMBERSHIP_CACHE_MAX:
            self._members = {k: v for k, v in self._members.items() if v > now}
            if len(self._members) >= MEMBERSHIP_CACHE_MAX:
                self._members.clear()
        self._members[key] = now + self.membership_ttl

    async def send_message(self, identity: Identity, body: dict, idempotency_key: str) -> dict:
        data = await self.call("POST", "/api/messages", identity, body,
                               {"Idempotency-Key": idempotency_key})
        return _message_of(data)

    async def mark_read(self, identity: Identity, chat_id: str, message_ids: list[str]) -> None:
        await self.call("POST", "/api/messages/read", identity,
                        {"chatId": chat_id, "messageIds": message_ids})

    async def set_reaction(self, identity: Identity, chat_id: str, message_id: str, emoji: str | None) -> dict:
        path = f"/api/messages/{quote(message_id)}/reactions"
        if emoji is None:
            data = await self.call("DELETE", path, identity)
        else:
            data = await self.call("PUT", path, identity, {"chatId": chat_id, "emoji": emoji})
        return _unwrap(data, "message")

    # -- one upstream request ---------------------------------------------------

    async def call(self, method: str, public_path: str, identity: Identity, body: dict | None = None,
                   extra_headers: dict | None = None, batched: bool = False) -> Any:
        """``method public_path`` as the proxy would send it (route table, prefix replaced): a
        service sees one path layout for HTTP and sockets (SPEC §5). ``batched`` (a GET): it may
        share a connection with other sockets' GETs of this loop turn (``forward_batched``)."""
        request, answer, service = self._request(method, public_path, identity, body, extra_headers)
        started = time.monotonic()
        client = self.http_client
        try:
            await (client.forward_batched(request) if batched else client.forward(request))
        except Exception as exc:
            return _outcome(service, answer, started, exc)
        return _outcome(service, answer, started)

    def send_messages(self, identity: Identity, bodies: list[dict]) -> list[Awaitable[dict]]:
        """Several ``send_message`` of one socket, their POSTs pipelined on one connection to
        the messages service (upstream/pipeline.py): it gets them in this order without a round
        trip between them (replaying one is safe: each has its Idempotency-Key)."""
        prepared = [self._request("POST", "/api/messages", identity, body,
                                  {"Idempotency-Key": body["clientMessageId"]}) for body in bodies]
        started = time.monotonic()
        futures = self.http_client.forward_in_order([request for request, _, _ in prepared])
        return [_sent_message(future, service, answer, started)
                for future, (_, answer, service) in zip(futures, prepared)]

    def _request(self, method: str, public_path: str, identity: Identity, body: dict | None,
                 extra_headers: dict | None) -> tuple[ForwardRequest, "_Answer", str]:
        try:
            resolved = resolve(self.routes, public_path)
        except PathError:
            resolved = None
        if resolved is None:
            raise EventError("UPSTREAM_UNAVAILABLE", f"no route for {public_path}")
        route = resolved.route
        headers = {
            "X-User-Id": identity.user_id,
            "X-Request-ID": os.urandom(16).hex(),
            "Authorization": f"Bearer {identity.token}",
            "Accept": "application/json",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        headers.update(extra_headers or {})
        answer = _Answer(self.http_client.max_buffer_size)
        payload = dumps_bytes(body) if body is not None else (b"" if method in ("POST", "PUT", "PATCH") else None)
        request = ForwardRequest(route.upstream, resolved.upstream_path, method, headers, payload, None,
                                 route.connect_timeout, route.timeout, answer.head, answer.chunk)
        return request, answer, route.service


def _outcome(service: str, answer: "_Answer", started: float, error: BaseException | None = None) -> Any:
    """The service's answer as JSON data, or the EventError it means."""
    if isinstance(error, HTTPClientError):  # 599: timeout or connection closed
        metrics.UPSTREAM_ERRORS.labels(service, "timeout" if "imeout" in str(error) else "connect").inc()
        raise EventError("UPSTREAM_UNAVAILABLE", f"{service} service unavailable")
    if isinstance(error, OSError):
        metrics.UPSTREAM_ERRORS.labels(service, "connect").inc()
        raise EventError("UPSTREAM_UNAVAILABLE", f"{service} service unavailable")
    if isinstance(error, _TooLarge):
        metrics.UPSTREAM_ERRORS.labels(service, "status").inc()
        raise EventError("UPSTREAM_ERROR", f"{service} service answered more than {answer.limit} bytes")
    if error is not None:
        raise error
    metrics.child(metrics.UPSTREAM_LATENCY, service).observe(time.monotonic() - started)
    if 200 <= answer.code < 300:
        if not answer.body:
            return {}
        try:
            return loads(answer.body, max_depth=None)
        except JSONRefused:
            raise EventError("UPSTREAM_ERROR", f"{service} service answered with invalid JSON") from None
    message = _upstream_message(answer.body) or f"{service} service answered {answer.code}"
    if answer.code in _CODE_OF_STATUS:
        raise EventError(_CODE_OF_STATUS[answer.code], message)
    if 400 <= answer.code < 500:
        raise EventError("VALIDATION_FAILED", message)
    metrics.UPSTREAM_ERRORS.labels(service, "status").inc()
    raise EventError("UPSTREAM_ERROR", f"{service} service answered {answer.code}")


async def _sent_message(future: Awaitable[None], service: str, answer: "_Answer", started: float) -> dict:
    try:
        await future
    except Exception as exc:
        return _message_of(_outcome(service, answer, started, exc))
    return _message_of(_outcome(service, answer, started))


def _message_of(data: Any) -> dict:
    message = _unwrap(data, "message")
    if message.get("id") is None:
        raise EventError("UPSTREAM_ERROR", "messages service returned a message without an id")
    return message


class _TooLarge(Exception):
    """A service's answer went past the client's buffer limit."""


class _Answer:
    """A service's status and body, read through ``PooledHTTPClient.forward`` (the proxy's
    path: no HTTPRequest or HTTPResponse per call), the body capped as ``fetch`` caps it."""

    __slots__ = ("code", "chunks", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.code = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit

    def head(self, start_line: httputil.ResponseStartLine, headers: httputil.HTTPHeaders) -> None:
        self.code = start_line.code

    def chunk(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise _TooLarge()
        self.chunks.append(chunk)

    @property
    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


def _unwrap(data: Any, name: str) -> dict:
    """Services answer ``{name: {...}}`` or the object itself."""
    if isinstance(data, dict) and isinstance(data.get(name), dict):
        return data[name]
    if isinstance(data, dict):
        return data
    raise EventError("UPSTREAM_ERROR", f"unexpected {name} from upstream")


def _upstream_message(body: bytes | None) -> str | None:
    """A short message out of an upstream JSON error body, if there is one."""
    try:
        data = loads(body or b"", max_depth=None)
    except JSONRefused:
        return None
    if isinstance(data, dict):
        error = data.get("error")
        for candidate in (error.get("message") if isinstance(error, dict) else error, data.get("message")):
            if isinstance(candidate, str) and candidate:
                return candidate[:200]
    return None
