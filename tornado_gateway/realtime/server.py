"""The node's Socket.IO server: sockets, connection auth, caps, sending, drain.

Interface for the rest of the gateway: ``emit_local(event, to, data)`` delivers to this
node's targeted sockets; ``disconnect_local(user_id, jti, before)`` closes revoked ones.
Client events are run by dispatch.py in the order each socket sent them.
"""

from __future__ import annotations

from tornado_gateway.config import RateLimit

import asyncio
import functools
import logging
import time

import socketio

from tornado_gateway import metrics
from tornado_gateway.logs import sockets as socket_log
from tornado_gateway.edge.identity import Identity, AuthError, bearer_token, check_access_token
from tornado_gateway.realtime.services import ChatServices
from tornado_gateway.realtime.dedupe import ReceiptMarks, SendRecords
from tornado_gateway.realtime.receipts import DeliveredReceipts
from tornado_gateway.cluster.redis_link import connect_subscriber
from tornado_gateway.realtime.managers import LocalManager, RedisFanoutManager
from tornado_gateway.realtime.room_manager import RoomFanoutManager
from tornado_gateway.realtime.presence import Presence
from tornado_gateway.realtime.events import RealtimeEvents
from tornado_gateway.realtime.payloads import EventError, check_auth_hello, iso_time
from tornado_gateway.realtime.typing_indicator import TypingIndicators
from tornado_gateway.realtime import wire
from tornado_gateway.realtime.dispatch import OrderedDispatch
from tornado_gateway.realtime.sessions import ExpiryTimers, SocketState
from tornado_gateway.parts import GatewayParts
from typing import Any, NoReturn

log = logging.getLogger("tornado_gateway.realtime")
PING_INTERVAL = 25
PING_TIMEOUT = 20
ROOM_LIVE_TIMEOUT = 3.0  # longest wait for a room's subscription before acking or announcing


class Realtime(OrderedDispatch):
    """The node's Socket.IO server and everything about its sockets."""

    def __init__(self, gateway: GatewayParts) -> None:
        self.gateway = gateway
        settings = gateway.settings
        self.settings = settings
        self.origins = [o for o in settings.allowed_origins if o != "*"]
        self.manager: LocalManager | RedisFanoutManager | RoomFanoutManager
        if gateway.redis is not None and settings.socket_fanout == "broadcast":
            self.manager = RedisFanoutManager(settings.redis_url or "", gateway.redis)
        elif gateway.redis is not None:
            url = settings.redis_url or ""
            self.manager = RoomFanoutManager(gateway.redis, lambda: connect_subscriber(url))
        else:
            self.manager = LocalManager()
        self.manager.on_event = self.receive
        self.sio = wire.GatewaySocketServer(
            self.receive,
            client_manager=self.manager,
            async_mode="tornado",
            cors_allowed_origins=list(self.origins),  # explicit list: never None or "*"
            cors_credentials=True,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            max_http_buffer_size=settings.socket_max_payload,
            http_compression=False,
            logger=False,
            engineio_logger=False,
        )
        self.pinger = wire.Pinger(PING_INTERVAL)
        wire.configure(self.manager, self.pinger)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.states: dict[str, SocketState] = {}
        self.expiries = ExpiryTimers(self._token_expired)
        self.sockets_of_user: dict[str, set[str]] = {}
        self.sockets_of_ip: dict[str, int] = {}
        self.services = ChatServices(gateway)
        self.sends = SendRecords(gateway.redis)
        self.receipts = DeliveredReceipts(ReceiptMarks(gateway.redis), self.manager, self._user_of)
        self.manager.on_delivery_ack = self.receipts.acked
        self.presence = Presence(gateway, self._announce_presence)
        self.typing = TypingIndicators(settings.typing_timeout, self._broadcast_typing)
        self.events = RealtimeEvents(self)

    # -- wiring ----------------------------------------------------------------

    def handlers(self) -> list:
        return [(r"/socket.io/", wire.make_socket_handler(self))]

    @functools.cached_property
    def upgrades(self) -> wire.DirectUpgrade:
        """Plain websocket connects of /socket.io/, answered below the Tornado handler (one
        per node: the router and the listener offer it their requests)."""
        return wire.DirectUpgrade(self)

    async def start(self) -> None:
        wire.initialize_manager(self.sio)
        self.presence.start()

    async def drain(self) -> None:
        """Close every socket so clients reconnect elsewhere; withdraw this node's presence."""
        states = list(self.states.values())
        if states:
            log.info("draining: closing %d socket(s)", len(states))
        for state in states:
            state.close_reason = "draining"
            self.emit_to_sid(state.sid, "error", {
                "code": "DRAINING", "message": "this node is shutting down; reconnect"})
        await asyncio.gather(*(self._close_transport(s.sid) for s in states), return_exceptions=True)
        await self.presence.withdraw_all()

    async def close(self) -> None:
        self.pinger.stop()
        await self.presence.close()
        if not isinstance(self.manager, LocalManager):
            await self.manager.close()

    def room_confirmation(self, room: str) -> "bool | asyncio.Future[bool]":
        """The start of a bounded wait until other nodes' events to ``room`` reach this node
        (SOCKET_FANOUT=rooms): an answer now (True at once while Redis is down: the node serves
        its local sockets meanwhile), or its future. ``room_confirmed`` ends the wait, so that
        a caller waits for it and for its own Redis calls at once."""
        redis = self.gateway.redis
        if not isinstance(self.manager, RoomFanoutManager) or redis is None or not redis.up:
            return True
        return self.manager.room_confirmation(room, ROOM_LIVE_TIMEOUT)

    async def room_confirmed(self, room: str, answer: "bool | asyncio.Future[bool]") -> None:
        if not (answer if isinstance(answer, bool) else await answer):
            log.warning("subscription to %s not confirmed within %ss; going on", room, ROOM_LIVE_TIMEOUT)

    def origin_allowed(self, origin: str | None) -> bool:
        return origin is None or origin in self.origins

    # -- connect / disconnect ----------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict, auth: Any = None) -> bool:
        """Admit (and log) a socket, or refuse it with ``connect_error`` ``data.code`` (logged with the reason)."""
        handler = environ["tornado.handler"]
        ip = getattr(handler, "socket_client_ip", None) or self.gateway.forwarding.client_ip(handler.request)
        try:
            admitted = await self._admit(sid, environ, auth, ip)
        except socketio.exceptions.ConnectionRefusedError as exc:
            data = exc.error_args.get("data") if isinstance(exc.error_args, dict) else None
            code = data.get("code") if isinstance(data, dict) else None
            if socket_log.enabled_for(logging.INFO):
                socket_log.write(logging.INFO, f"socket refused: {code} ({exc.error_args.get('message')})",
                                 "connect", sid, client_ip=ip, code=code)
            raise
        if self._transport_gone(sid):
            # The client went away while its connect was decided (a rate check, a subscription
            # and a presence claim are awaited): python-socketio reports no disconnect of a
            # socket still connecting, so it is undone here, or its state, its presence and
            # its share of MAX_CONNECTIONS_PER_IP would stay for the life of the process.
            await self._on_disconnect(sid, "transport closed while connecting")
            return False
        return admitted

    def _transport_gone(self, sid: str) -> bool:
        socket = wire.eio_socket(self.sio, self.manager.eio_sid_from_sid(sid, "/"))
        return socket is None or socket.closed or socket.closing

    async def _admit(self, sid: str, environ: dict, auth: Any, ip: str) -> bool:
        handler = environ["tornado.handler"]
        if self.gateway.draining:
            _refuse("DRAINING", "this node is shutting down")
        decision = await self.gateway.limits.allow("socket_connect", ip, self.settings.socket_rate_connect)
        if not decision.allowed:
            _refuse("RATE_LIMITED", "too many connection attempts")
        cap = self.settings.max_connections_per_ip
        if cap and self.sockets_of_ip.get(ip, 0) >= cap:
            _refuse("TOO_MANY_CONNECTIONS", "too many connections from this address")
        token = auth.get("token") if isinstance(auth, dict) else None
        if token is None:
            token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
        identity = None
        if token is not None:
            if not isinstance(token, str) or not token:
                _refuse("INVALID_TOKEN", "token must be a non-empty string")
            try:
                identity = check_access_token(self.gateway.tokens, self.gateway.revocations, token)
            except AuthError as exc:
                _refuse(exc.code, exc.message)
            self._check_user_cap(identity.user_id)
        state = SocketState(sid, ip)
        self.states[sid] = state
        wire.write_directly(self.sio, self.manager, sid, handler)
        self.sockets_of_ip[ip] = self.sockets_of_ip.get(ip, 0) + 1
        metrics.OPEN_SOCKETS.inc()
        transport = "websocket" if getattr(handler, "ws_connection", None) else "polling"
        if socket_log.enabled_for(logging.INFO):
            socket_log.write(logging.INFO, f"socket connected ({transport})" if identity else
                             f"socket connected ({transport}), awaiting auth:hello", "connect", sid,
                             client_ip=ip, user_id=identity.user_id if identity else None)
        if getattr(handler, "lean_socket", None) is not None:
            handler.socket_client_ip = ip  # a second connect of "/" on this socket finds it here
            wire.slim_environ(self.sio, self.manager.eio_sid_from_sid(sid, "/"), environ)
        if identity is not None:
            await self._authenticate(state, identity)
        else:
            state.timer = asyncio.get_running_loop().call_later(
                # the coroutine is made when the timer fires: a cancelled timer leaves none un-awaited
                self.settings.auth_timeout, lambda: self._spawn(self._auth_timed_out(sid)))
        return True

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        state = self.states.pop(sid, None)
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            self.manager.forget_websocket(eio_sid)
        if state is None:
            return
        if socket_log.enabled_for(logging.INFO):
            socket_log.write(logging.INFO, f"socket disconnected: {state.close_reason or reason or 'unknown'}",
                             "disconnect", sid, client_ip=state.ip, user_id=state.user_id)
        state.closing = True
        metrics.OPEN_SOCKETS.dec()
        if state.timer is not None:
            state.timer.cancel()
        count = self.sockets_of_ip.get(state.ip, 0) - 1
        if count > 0:
            self.sockets_of_ip[state.ip] = count
        else:
            self.sockets_of_ip.pop(state.ip, None)
        await self.typing.stop_all(sid)
        user_id = state.user_id
        if user_id is not None:
            sids = self.sockets_of_user.get(user_id)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self.sockets_of_user[user_id]
            await self.presence.socket_offline(user_id)

    def _check_user_cap(self, user_id: str) -> None:
        cap = self.settings.max_connections_per_user
        if cap and len(self.sockets_of_user.get(user_id, ())) >= cap:
            _refuse("TOO_MANY_CONNECTIONS", "too many connections for this user")

    async def _authenticate(self, state: SocketState, identity: Identity) -> None:
        """First authentication of a socket: user room, presence, expiry timer."""
        state.identity = identity
        self.sockets_of_user.setdefault(identity.user_id, set()).add(state.sid)
        room = "user:" + identity.user_id
        await self.sio.enter_room(state.sid, room)
        live = self.room_confirmation(room)  # events to the user reach this node: awaited below,
        self._schedule_expiry(state)  # while the presence claim is in flight too
        await self.presence.socket_online(identity.user_id)
        await self.room_confirmed(room, live)

    def _schedule_expiry(self, state: SocketState) -> None:
        if state.timer is not None:
            state.timer.cancel()
        state.expired = False
        assert state.identity is not None
        # The leeway of §3, as on HTTP: a token is expired once exp + leeway has passed.
        state.timer = self.expiries.call_at(state.identity.expires_at + self.gateway.tokens.leeway, state.sid)

    def _token_expired(self, sid: str) -> None:
        state = self.states.get(sid)
        if state is None:
            return
        state.expired = True
        self.emit_to_sid(sid, "error", {
            "code": "TOKEN_EXPIRED",
            "message": f"token expired; send auth:hello with a new token within "
                       f"{self.settings.socket_token_grace:g}s", "event": None})
        state.timer = asyncio.get_running_loop().call_later(
            self.settings.socket_token_grace, lambda: self._spawn(self.disconnect(sid, "token expired")))

    async def _auth_timed_out(self, sid: str) -> None:
        state = self.states.get(sid)
        if state is None or state.identity is not None:
            return
        self.emit_to_sid(sid, "error", {"code": "AUTH_TIMEOUT", "event": None,
                                        "message": "no auth:hello within AUTH_TIMEOUT"})
        await self.disconnect(sid, "no auth:hello within AUTH_TIMEOUT")

    async def auth_hello(self, state: SocketState, payload: Any) -> dict:
        """``auth:hello {token}``: authenticate, or refresh the token of the same user."""
        token = check_auth_hello(payload)
        try:
            identity = check_access_token(self.gateway.tokens, self.gateway.revocations, token)
        except AuthError as exc:
            raise EventError(exc.code, exc.message) from None
        if state.identity is None:
            try:
                self._check_user_cap(identity.user_id)
            except socketio.exceptions.ConnectionRefusedError:
                state.closing = True
                raise EventError("TOO_MANY_CONNECTIONS", "too many connections for this user") from None
            if state.timer is not None:
                state.timer.cancel()
            await self._authenticate(state, identity)
            if socket_log.enabled_for(logging.INFO):
                socket_log.write(logging.INFO, "socket authenticated (auth:hello)", "auth:hello", state.sid,
                                 user_id=identity.user_id)
        elif identity.user_id != state.identity.user_id:
            raise EventError("FORBIDDEN", "auth:hello may only refresh the token of the same user")
        else:
            state.identity = identity
            self._schedule_expiry(state)
        return {"userId": identity.user_id, "expiresAt": iso_time(identity.expires_at)}

    async def _revoked(self, identity: Identity) -> bool:
        return bool(await self.gateway.revocations.is_revoked(identity))

    async def check_rate(self, user_id: str, scope: str, limit: RateLimit) -> None:
        decision = await self.gateway.limits.allow(scope, user_id, limit)
        if not decision.allowed:
            raise EventError("RATE_LIMITED", "too many events; slow down")

    # -- sending -------------------------------------------------------------------

    def emit_to_sid(self, sid: str, event: str, data: Any) -> None:
        """To one local socket (its own room never leaves this node)."""
        self.manager.deliver_local(event, data, sid)

    async def broadcast(self, event: str, data: Any, room: str | list[str], skip_sid: Any = None) -> None:
        """To a room (or rooms) on every node."""
        await self.manager.emit(event, data, "/", room=room, skip_sid=skip_sid)

    @property
    def room_scoped(self) -> bool:
        """True when other nodes hear only the rooms of their sockets (SOCKET_FANOUT=rooms with Redis)."""
        return isinstance(self.manager, RoomFanoutManager)

    async def publish_event(self, event: str, to: dict, data: dict) -> None:
        """An ingress event published on its rooms' channels, then delivered here; raises when Redis fails."""
        rooms = _rooms_of(to)
        if rooms and isinstance(self.manager, RoomFanoutManager):
            await self.manager.emit_confirmed(event, data, rooms if len(rooms) > 1 else rooms[0])

    async def emit_local(self, event: str, to: dict, data: dict) -> int:
        rooms = _rooms_of(to)
        if not rooms:
            return 0
        return self.manager.deliver_local(event, data, rooms if len(rooms) > 1 else rooms[0])

    async def disconnect_local(self, user_id: str, jti: str | None = None,
                               before: float | None = None) -> int:
        closed = 0
        for sid in list(self.sockets_of_user.get(user_id, ())):
            state = self.states.get(sid)
            if state is None or state.identity is None:
                continue
            identity = state.identity
            by_jti = jti is not None and identity.jti == jti
            # The rule of revocation.py: a token without iat counts as issued before.
            by_time = before is not None and (identity.issued_at is None or identity.issued_at < before)
            if (jti is not None or before is not None) and not (by_jti or by_time):
                continue
            self.emit_to_sid(sid, "error", {"code": "TOKEN_REVOKED", "message": "token revoked",
                                            "event": None})
            await self.disconnect(sid, "token revoked")
            closed += 1
        return closed

    async def disconnect(self, sid: str, why: str = "closed by the gateway") -> None:
        """Socket.IO disconnect (the client does not reconnect by itself); ``why`` goes to the log."""
        state = self.states.get(sid)
        if state is not None:
            state.closing = True
            state.close_reason = state.close_reason or why
        await self.sio.disconnect(sid, ignore_queue=True)

    async def _close_transport(self, sid: str) -> None:
        """Engine.IO close: the client sees a transport close and reconnects (elsewhere)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        if wire.eio_socket(self.sio, eio_sid) is None:
            return
        try:
            await asyncio.wait_for(self.sio.eio.disconnect(eio_sid), timeout=2.0)
        except Exception:
            pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_task_failure)

    # -- presence and typing fan-out ------------------------------------------------------

    def _user_of(self, sid: str) -> str | None:
        state = self.states.get(sid)
        return state.user_id if state is not None else None

    async def _announce_presence(self, user_id: str, status: str, last_seen: str | None,
                                 chat_ids: list[str]) -> None:
        if not chat_ids:
            return
        data = {"userId": user_id, "status": status}
        if last_seen:
            data["lastSeen"] = last_seen
        await self.broadcast("presence:update", data, ["chat:" + c for c in chat_ids])

    async def _broadcast_typing(self, chat_id: str, user_id: str, typing: bool, skip_sid: Any) -> None:
        await self.broadcast("typing:update", {"chatId": chat_id, "userId": user_id, "typing": typing},
                             "chat:" + chat_id, skip_sid=skip_sid)


def _refuse(code: str, message: str) -> NoReturn:
    """Refuse a connection: the client gets ``connect_error`` with ``data.code``."""
    raise socketio.exceptions.ConnectionRefusedError(message, {"code": code, "message": message})


def _rooms_of(to: Any) -> list[str]:
    if not isinstance(to, dict):
        return []
    if isinstance(to.get("chat"), str):
        return ["chat:" + to["chat"]]
    if isinstance(to.get("user"), str):
        return ["user:" + to["user"]]
    if isinstance(to.get("users"), list):
        return ["user:" + u for u in to["users"] if isinstance(u, str)]
    return []


def _log_task_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("socket task failed: %r", task.exception())

