"""Event ingress: services tell the gateway what to push to clients.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

from typing import Any

import asyncio
import logging
import time

from tornado_gateway import metrics
from tornado_gateway.cluster.redis_cluster import MasterRotation
from tornado_gateway.cluster.subscription import Subscription
from tornado_gateway.codec import JSONRefused, dumps, loads
from tornado_gateway.errors import GatewayError
from tornado_gateway.parts import GatewayParts

log = logging.getLogger("tornado_gateway.ingress")

CHANNEL = "gateway:events"
SERVER_EVENTS = frozenset({
    "message:new", "message:edit", "message:delete", "receipt:delivered", "receipt:read",
    "typing:update", "chat:updated", "presence:update", "error",
})
REVOKE = "session:revoke"
MAX_TARGETS = 1000
MAX_ID_LENGTH = 128


class InvalidEvent(ValueError):
    """An ingress message is malformed; the message says why (never echoes payload data)."""


# -- validation -------------------------------------------------------------

def parse_event(raw: bytes | str, max_size: int) -> dict:
    """Validate one ingress message; returns it normalised, raises InvalidEvent."""
    if len(raw) > max_size:
        raise InvalidEvent(f"message larger than {max_size} bytes")
    try:
        message = loads(raw)  # strict: NaN, lone surrogates, depth > 64 refused
    except JSONRefused as exc:
        raise InvalidEvent(f"body refused: {exc}") from None
    if not isinstance(message, dict):
        raise InvalidEvent("body must be a JSON object")
    if "type" in message:
        return _parse_revoke(message)
    return _parse_emit(message)


def _parse_emit(message: dict) -> dict:
    _only_keys(message, {"event", "to", "data"}, required={"event", "to", "data"})
    event = message["event"]
    if not isinstance(event, str) or event not in SERVER_EVENTS:
        shown = repr(event[:64]) if isinstance(event, str) else type(event).__name__
        raise InvalidEvent(f"unknown event {shown}; expected one of {', '.join(sorted(SERVER_EVENTS))}")
    if not isinstance(message["data"], dict):
        raise InvalidEvent("'data' must be a JSON object")
    return {"event": event, "to": _parse_target(message["to"]), "data": message["data"]}


def _parse_target(to: Any) -> dict:
    if not isinstance(to, dict) or len(to) != 1:
        raise InvalidEvent("'to' must be an object with exactly one of 'chat', 'user', 'users'")
    kind, value = next(iter(to.items()))
    if kind in ("chat", "user"):
        return {kind: _id(value, f"to.{kind}")}
    if kind == "users":
        if not isinstance(value, list) or not value:
            raise InvalidEvent("'to.users' must be a non-empty array of ids")
        if len(value) > MAX_TARGETS:
            raise InvalidEvent(f"'to.users' has more than {MAX_TARGETS} ids")
        return {"users": list(dict.fromkeys(_id(v, "to.users[]") for v in value))}
    raise InvalidEvent("'to' must be an object with exactly one of 'chat', 'user', 'users'")


def _parse_revoke(message: dict) -> dict:
    if message["type"] != REVOKE:
        raise InvalidEvent(f"unknown type; the only accepted type is {REVOKE!r}")
    _only_keys(message, {"type", "userId", "jti", "before", "exp"}, required={"type", "userId"})
    revoke: dict[str, Any] = {"type": REVOKE, "userId": _id(message["userId"], "userId")}
    if message.get("jti") is not None:
        revoke["jti"] = _id(message["jti"], "jti", max_length=256)
    for name in ("before", "exp"):
        value = message.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e11:
            raise InvalidEvent(f"'{name}' must be a positive epoch time in seconds")
        revoke[name] = value
    if "jti" not in revoke and "before" not in revoke:
        revoke["before"] = time.time()
    return revoke


def _only_keys(message: dict, allowed: set, required: set) -> None:
    missing = sorted(required - message.keys())
    if missing:
        raise InvalidEvent(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(k[:32] for k in message.keys() - allowed)
    if unknown:
        raise InvalidEvent(f"unknown field(s): {', '.join(unknown)}")


def _id(value: Any, name: str, max_length: int = MAX_ID_LENGTH) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidEvent(f"'{name}' must be a non-empty string of at most {max_length} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidEvent(f"'{name}' contains control characters")
    return value


def event_name(message: dict) -> str:
    return message.get("event") or message["type"]


# -- delivery and the subscriber ----------------------------------------------

class Ingress:
    """Validates, fans out (through Redis) and delivers ingress events on this node."""


    def __init__(self, gateway: GatewayParts) -> None:
        self.gateway = gateway
        self.redis = gateway.redis  # RedisLink or None
        self.max_size = gateway.settings.ingress_max_body_size
        self.subscribed = False
        self._task: asyncio.Task | None = None
        self._first_subscription = asyncio.Event()

    async def start(self) -> None:
        if self.redis is None:
            return
        self._task = asyncio.create_task(self._subscribe_forever())
        if not self.redis.up:
            return  # the loop subscribes when Redis comes; do not hold start-up
        try:  # listen before serving
            await asyncio.wait_for(self._first_subscription.wait(), timeout=2.0)
        except asyncio.TimeoutError:
            pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def submit(self, message: dict) -> None:
        """Fan a validated message out: PUBLISH in Redis mode, deliver here in memory mode."""
        if self.redis is None:
            await self.deliver(message)
            return
        realtime = self.gateway.realtime
        try:
            if message.get("type") != REVOKE and realtime.room_scoped:
                # Room-scoped: published on the target rooms' channels only (not gateway:events).
                await realtime.publish_event(message["event"], message["to"], message["data"])
                return
            if message.get("type") == REVOKE:
                await self.gateway.revocations.store(
                    message["userId"], message.get("jti"), message.get("before"), message.get("exp"))
            await self.redis.client.publish(CHANNEL, dumps(message))
        except Exception as exc:
            self.redis.note_failure(exc)
            raise GatewayError("REDIS_UNAVAILABLE", "Redis is unreachable: the event was not "
                               "sent to any node; retry later", 503, {"Retry-After": "1"}) from None

    async def deliver(self, message: dict) -> None:
        """Act on a validated message for THIS node's sockets only."""
        if message.get("type") == REVOKE:
            await self._revoke(message)
            return
        await self.gateway.realtime.emit_local(message["event"], message["to"], message["data"])

    async def _revoke(self, message: dict) -> None:
        user_id, jti = message["userId"], message.get("jti")
        before, exp = message.get("before"), message.get("exp")
        revocations = self.gateway.revocations
        revocations.apply(user_id, jti, before, exp)
        await self.gateway.realtime.disconnect_local(user_id, jti=jti, before=before)
        if self.redis is not None:
            try:  # a revocation that was only PUBLISHed must be durable too (idempotent)
                await revocations.store(user_id, jti, before, exp)
            except Exception as exc:
                log.warning("revocation for user %s not stored in Redis: %s", user_id,
                            type(exc).__name__)

    async def handle_raw(self, raw: bytes) -> None:
        """One message from the Redis channel: validate, count, deliver; log and drop bad ones."""
        metrics.child(metrics.CLUSTER_MESSAGES_IN, "events").inc()
        try:
            message = parse_event(raw, self.max_size)
        except InvalidEvent as exc:
            metrics.EVENTS_REJECTED.labels("redis").inc()
            log.warning("dropped invalid event from %s: %s", CHANNEL, exc)
            return
        metrics.child(metrics.EVENTS_IN, event_name(message), "redis").inc()
        try:
            await self.deliver(message)
        except Exception:
            log.exception("delivering %s failed", event_name(message))

    async def _subscribe_forever(self) -> None:
        redis = self.redis
        assert redis is not None  # started only with Redis
        if redis.cluster is not None:  # classic pub/sub: any master hears every PUBLISH
            masters = MasterRotation(redis.cluster)
            await Subscription(CHANNEL, masters.next_client, self.handle_raw,
                               on_subscribed=self._on_subscribed,
                               on_lost=lambda exc: self._set_subscribed(False, exc), own_client=True).run()
            return
        await Subscription(CHANNEL, lambda: redis.client, self.handle_raw,
                           on_subscribed=self._on_subscribed,
                           on_lost=lambda exc: self._set_subscribed(False, exc)).run()

    async def _on_subscribed(self) -> None:
        self._set_subscribed(True, None)
        # Anything published while we were not listening is gone: re-read revocations.
        await self.gateway.revocations.sync()

    def _set_subscribed(self, subscribed: bool, error: BaseException | None) -> None:
        if subscribed:
            self._first_subscription.set()
        if subscribed == self.subscribed:
            return
        self.subscribed = subscribed
        if subscribed:
            log.info("subscribed to %s", CHANNEL)
        else:
            log.error("lost subscription to %s, reconnecting: %s", CHANNEL, type(error).__name__)

    def readiness(self) -> dict:
        if self.redis is None:
            return {"ok": True, "mode": "memory"}
        return {"ok": self.subscribed or not self.redis.up, "subscribed": self.subscribed}
