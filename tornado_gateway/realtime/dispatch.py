"""Client events of one socket, one after another in the order sent; the ack envelope."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine, cast

from tornado_gateway import metrics
from tornado_gateway.codec import Refused
from tornado_gateway.edge.identity import Identity
from tornado_gateway.realtime import wire
from tornado_gateway.realtime.events import KNOWN_EVENTS, PreparedSend, RealtimeEvents
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
        event = _event_name(data)
        if isinstance(payload, Refused) or (state.worker is None and event != "message:send"):
            early = None  # nothing queued before it to overlap with: its worker does it all
        else:
            early = self.events.start_early(state, event, payload)
        state.pending.append((data, ack_id, early))
        if state.worker is None:
            state.worker = asyncio.ensure_future(self._run_pending(state))

    async def _run_pending(self, state: SocketState) -> None:
        try:
            while state.pending and not state.closing:
                sends = self._fresh_sends(state)
                if len(sends) > 1:
                    del state.pending[:len(sends)]
                    await self._handle_sends(state, sends)
                    continue
                data, ack_id, early = state.pending.pop(0)
                await self._handle(state, data, ack_id, early)
        finally:
            state.worker = None
            if state.closing:
                while state.pending:
                    self.events.abandon(state.pending.pop(0)[2])

    async def _handle(self, state: SocketState, data: list, ack_id: Any, early: Any = None) -> None:
        event = _event_name(data)
        metrics.child(metrics.EVENTS_IN, event if event in KNOWN_EVENTS else "unknown", "socket").inc()
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
            reply = self._reply_of(state, event, {} if result is None else result)
        except Exception as exc:
            reply = self._reply_of(state, event, exc)
        await self._reply(state, event, ack_id, reply)
        if state.closing and state.sid in self.states:
            await self.disconnect(state.sid, f"closed after {event}: {reply.get('error', {}).get('code')}")

    def _fresh_sends(self, state: SocketState) -> list[tuple[Any, asyncio.Task, PreparedSend]]:
        """The new message:send at the head of the queue whose early part is done."""
        sends = []
        for data, ack_id, early in state.pending:
            prepared = self.events.fresh_send(_event_name(data), early)
            if prepared is None:
                break
            sends.append((ack_id, early, prepared))
        return sends

    async def _handle_sends(self, state: SocketState,
                            sends: list[tuple[Any, asyncio.Task, PreparedSend]]) -> None:
        """New messages of one socket, their POSTs pipelined (events.send_in_order); each is
        acked as its answer comes, in order."""
        metrics.child(metrics.EVENTS_IN, "message:send", "socket").inc(len(sends))
        done = 0
        try:
            await self._check_authenticated(state)
            async for result in self.events.send_in_order(cast(Authenticated, state),
                                                          [prepared for _, _, prepared in sends]):
                await self._reply(state, "message:send", sends[done][0],
                                  self._reply_of(state, "message:send", result))
                done += 1
        except Exception as exc:
            for ack_id, early, _ in sends[done:]:
                self.events.abandon(early)
                await self._reply(state, "message:send", ack_id, self._reply_of(state, "message:send", exc))
        if state.closing and state.sid in self.states:
            await self.disconnect(state.sid, "closed after message:send: token revoked")

    async def _check_authenticated(self, state: SocketState) -> None:
        if state.identity is None:
            raise EventError("UNAUTHENTICATED", "send auth:hello {token} first")
        if state.expired:
            raise EventError("TOKEN_EXPIRED", "token expired; send auth:hello with a new token")
        if await self._revoked(state.identity):
            raise EventError("TOKEN_REVOKED", "token revoked")

    @staticmethod
    def _reply_of(state: SocketState, event: str, result: dict | Exception) -> dict:
        """The ack envelope of an event's result or error (a revoked token closes the socket)."""
        if isinstance(result, EventError):
            if result.code == "TOKEN_REVOKED":
                state.closing = True
            return _failure(result.code, result.message)
        if isinstance(result, Exception):
            log.error("socket event %s failed", event, exc_info=result,
                      extra={"event": event, "sid": state.sid})
            return _failure("INTERNAL", "internal error")
        return {"ok": True, "data": result}

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
