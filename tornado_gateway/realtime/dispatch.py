"""Client events of one socket, one after another in the order sent; the ack envelope."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine, cast

from tornado_gateway import metrics
from tornado_gateway.codec import Refused
from tornado_gateway.edge.identity import Identity
from tornado_gateway.realtime import wire
from tornado_gateway.realtime.events import KNOWN_EVENTS, RealtimeEvents
from tornado_gateway.realtime.payloads import EventError
from tornado_gateway.realtime.sessions import Authenticated, SocketState

log = logging.getLogger("tornado_gateway.realtime")
MAX_PENDING_EVENTS = 64  # events queued behind a slow one, per socket


class OrderedDispatch:
    """The per-socket event queue of ``Realtime`` (mixed in)."""

    states: dict[str, SocketState]
    events: RealtimeEvents
    manager: Any
    sio: Any

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        raise NotImplementedError

    async def auth_hello(self, state: SocketState, payload: Any) -> dict:
        raise NotImplementedError

    async def disconnect(self, sid: str, why: str = "closed by the gateway") -> None:
        raise NotImplementedError

    async def _revoked(self, identity: Identity) -> bool:
        raise NotImplementedError

    def emit_to_sid(self, sid: str, event: str, data: Any) -> None:
        raise NotImplementedError

    def receive(self, sid: str, eio_sid: str, data: list, ack_id: Any) -> None:
        state = self.states.get(sid)
        if state is None or state.closing:
            return
        if len(state.pending) >= MAX_PENDING_EVENTS:
            self._spawn(self._reply(state, _event_name(data), ack_id,
                                    _failure("RATE_LIMITED", "too many events in flight on this socket")))
            return
        payload = data[1] if isinstance(data, list) and len(data) > 1 else None
        early = None if isinstance(payload, Refused) else self.events.start_early(
            state, _event_name(data), payload)
        state.pending.append((data, ack_id, early))
        if state.worker is None:
            state.worker = asyncio.ensure_future(self._run_pending(state))

    async def _run_pending(self, state: SocketState) -> None:
        try:
            while state.pending and not state.closing:
                data, ack_id, early = state.pending.pop(0)
                await self._handle(state, data, ack_id, early)
        finally:
            state.worker = None
            if state.closing:
                while state.pending:
                    self.events.abandon(state.pending.pop(0)[2])

    async def _handle(self, state: SocketState, data: list, ack_id: Any, early: Any = None) -> None:
        event = _event_name(data)
        metrics.EVENTS_IN.labels(event if event in KNOWN_EVENTS else "unknown", "socket").inc()
        payload = data[1] if len(data) > 1 else None
        result: dict | None
        try:
            refused = next((item for item in data if isinstance(item, Refused)), None)
            if refused is not None:
                log.warning("socket event %s refused: %s", event or "(unnamed)", refused.reason,
                            extra={"event": event, "sid": state.sid})
                self.events.abandon(early)
                raise EventError("VALIDATION_FAILED", f"payload refused: {refused.reason}")
            if event == "auth:hello":
                result = await self.auth_hello(state, payload)
            else:
                try:
                    await self._check_authenticated(state)
                except EventError:
                    self.events.abandon(early)
                    raise
                result = await self.events.dispatch(cast(Authenticated, state), event, payload, early)
            reply: dict = {"ok": True, "data": {} if result is None else result}
        except EventError as exc:
            reply = _failure(exc.code, exc.message)
            if exc.code == "TOKEN_REVOKED":
                state.closing = True
        except Exception:
            log.exception("socket event %s failed", event, extra={"event": event, "sid": state.sid})
            reply = _failure("INTERNAL", "internal error")
        await self._reply(state, event, ack_id, reply)
        if state.closing and state.sid in self.states:
            await self.disconnect(state.sid, f"closed after {event}: {reply.get('error', {}).get('code')}")

    async def _check_authenticated(self, state: SocketState) -> None:
        if state.identity is None:
            raise EventError("UNAUTHENTICATED", "send auth:hello {token} first")
        if state.expired:
            raise EventError("TOKEN_EXPIRED", "token expired; send auth:hello with a new token")
        if await self._revoked(state.identity):
            raise EventError("TOKEN_REVOKED", "token revoked")

    async def _reply(self, state: SocketState, event: str, ack_id: Any, reply: dict) -> None:
        """The ack envelope, or an ``error`` event when the client asked for no ack."""
        if ack_id is not None:
            eio_sid = self.manager.eio_sid_from_sid(state.sid, "/")
            if eio_sid is not None and not self.manager.send_ack(eio_sid, ack_id, reply):
                await wire.send_ack_packet(self.sio, eio_sid, ack_id, reply)
        elif not reply["ok"]:
            self.emit_to_sid(state.sid, "error", {**reply["error"], "event": event})


def _failure(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}}


def _event_name(data: Any) -> str:
    if isinstance(data, list) and data and isinstance(data[0], str):
        return data[0][:64]
    return ""
