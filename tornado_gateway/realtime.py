"""Socket.IO on the gateway: server, connection auth, per-socket ordered dispatch, acks.

Owns the python-socketio ``AsyncServer`` (Tornado driver, path
``/socket.io/``), each socket's state, authentication (handshake token,
``auth:hello``, AUTH_TIMEOUT, refresh, TOKEN_EXPIRED with grace,
revocation), connection caps, and the ack envelope. The events themselves
are in realtime_events.py, payload checks in realtime_payloads.py.

Order: python-socketio would run each client event as its own task; here a
socket's events go through that socket's queue and run one after another
(sockets still run concurrently), so they take effect in the order sent.

Interface for the other parts of the gateway (``gateway.realtime``)::

    await realtime.emit_local(event, to, data) -> int
        Deliver a server->client event to THIS node's targeted sockets only
        (the ingress calls it on every node for each gateway:events message).
        to = {"chat": id} | {"user": id} | {"users": [ids]}. message:new
        delivered this way gets delivered receipts like socket-sent ones when
        data.message has ``id`` and ``senderId`` (or ``sender``/``sender.id``).
        Returns the number of sockets it was queued for.

    await realtime.disconnect_local(user_id, jti=None, before=None) -> int
        Disconnect this node's sockets of ``user_id`` whose token has that
        ``jti``, or was issued (iat) before ``before`` (epoch s), or all of
        the user's sockets when neither is given. Each first receives
        ``error {code:"TOKEN_REVOKED", message}``. Returns how many.

Before every client event (and at connect and auth:hello) the socket's token
is checked with ``gateway.revocations.is_revoked(identity)`` when that
exists: a revoked token is refused with TOKEN_REVOKED and the socket is
disconnected.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import socketio
import tornado.web
from engineio.async_drivers.tornado import get_tornado_handler
from socketio import packet as sio_packet

from tornado_gateway import metrics
from tornado_gateway.auth import AuthError, bearer_token
from tornado_gateway.chat_services import ChatServices
from tornado_gateway.dedupe import OnceMarks, SendRecords
from tornado_gateway.errors import error_body
from tornado_gateway.handlers import LingeringClose
from tornado_gateway.fanout import LocalManager, RedisFanoutManager
from tornado_gateway.presence import Presence
from tornado_gateway.realtime_events import KNOWN_EVENTS, RealtimeEvents
from tornado_gateway.realtime_payloads import EventError, check_auth_hello, iso_time
from tornado_gateway.typing_indicator import TypingIndicators

log = logging.getLogger("tornado_gateway.realtime")
MAX_PENDING_EVENTS = 64  # events queued behind a slow one, per socket
PING_INTERVAL = 25
PING_TIMEOUT = 20


class SocketState:
    """What the gateway knows about one connected socket."""

    __slots__ = ("sid", "ip", "identity", "chats", "pending", "worker", "timer", "expired",
                 "closing")

    def __init__(self, sid: str, ip: str):
        self.sid = sid
        self.ip = ip
        self.identity = None  # auth.Identity once authenticated
        self.chats: set[str] = set()  # chats joined (rooms chat:<id>)
        self.pending: collections.deque = collections.deque()
        self.worker: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None  # auth timeout, token expiry or grace
        self.expired = False
        self.closing = False

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity is not None else None


class GatewaySocketServer(socketio.AsyncServer):
    """AsyncServer whose client events go to :meth:`Realtime.receive` (ordered, acked)."""

    def __init__(self, realtime: "Realtime", **kwargs):
        self.realtime = realtime
        super().__init__(**kwargs)

    async def _handle_event(self, eio_sid, namespace, id, data):
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if sid is None or not self.manager.is_connected(sid, namespace or "/"):
            return
        self.realtime.receive(sid, eio_sid, data, id)


class _LocalLimits:
    """Fixed-window counters, used only when the gateway has no shared ``limits``."""

    class Decision:
        def __init__(self, allowed: bool):
            self.allowed = allowed

    def __init__(self):
        self.windows: dict[tuple, list] = {}

    async def allow(self, scope: str, key: str, limit):
        now = time.monotonic()
        window = self.windows.get((scope, key))
        if window is None or window[0] <= now:
            if len(self.windows) > 100_000:
                self.windows = {k: v for k, v in self.windows.items() if v[0] > now}
            window = self.windows[(scope, key)] = [now + limit.window, 0]
        window[1] += 1
        return self.Decision(window[1] <= limit.count)


class Realtime:
    """The node's Socket.IO server and everything about its sockets."""

    def __init__(self, gateway):
        self.gateway = gateway
        settings = gateway.settings
        self.settings = settings
        self.origins = [o for o in settings.allowed_origins if o != "*"]
        if gateway.redis is not None:
            self.manager = RedisFanoutManager(settings.redis_url, gateway.redis)
        else:
            self.manager = LocalManager()
        self.manager.on_delivery_ack = self._delivery_acked
        self.sio = GatewaySocketServer(
            self,
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
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.states: dict[str, SocketState] = {}
        self.sockets_of_user: dict[str, set[str]] = {}
        self.sockets_of_ip: dict[str, int] = {}
        self.services = ChatServices(gateway)
        self.sends = SendRecords(gateway.redis)
        self.receipt_marks = OnceMarks(gateway.redis, "gw:receipt:")
        self.presence = Presence(gateway, self._announce_presence)
        self.typing = TypingIndicators(settings.typing_timeout, self._broadcast_typing)
        self.events = RealtimeEvents(self)
        self._local_limits = _LocalLimits()
        self._receipts: list[tuple] = []
        self._receipt_flush: asyncio.Task | None = None

    # -- wiring ----------------------------------------------------------------

    def handlers(self) -> list:
        return [(r"/socket.io/", make_socket_handler(self))]

    async def start(self) -> None:
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.manager.initialize()
        self.presence.start()

    async def drain(self) -> None:
        """Close every socket so clients reconnect elsewhere; withdraw this node's presence."""
        states = list(self.states.values())
        if states:
            log.info("draining: closing %d socket(s)", len(states))
        for state in states:
            self.emit_to_sid(state.sid, "error", {
                "code": "DRAINING", "message": "this node is shutting down; reconnect"})
        await asyncio.gather(*(self._close_transport(s.sid) for s in states), return_exceptions=True)
        await self.presence.withdraw_all()

    async def close(self) -> None:
        await self.presence.close()
        if isinstance(self.manager, RedisFanoutManager):
            await self.manager.close()

    def origin_allowed(self, origin: str | None) -> bool:
        return origin is None or origin in self.origins

    @property
    def limits(self):
        return getattr(self.gateway, "limits", None) or self._local_limits

    # -- connect / disconnect ----------------------------------------------------

    async def _on_connect(self, sid, environ, auth=None):
        request = environ["tornado.handler"].request
        ip = self.gateway.forwarding.client_ip(request)
        if self.gateway.draining:
            _refuse("DRAINING", "this node is shutting down")
        decision = await self.limits.allow("socket_connect", ip, self.settings.socket_rate_connect)
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
                identity = self.gateway.tokens.verify_access(token)
            except AuthError as exc:
                _refuse(exc.code, exc.message)
            if await self._revoked(identity):
                _refuse("TOKEN_REVOKED", "token revoked")
            self._check_user_cap(identity.user_id)
        state = SocketState(sid, ip)
        self.states[sid] = state
        self._write_directly(sid, environ["tornado.handler"])
        self.sockets_of_ip[ip] = self.sockets_of_ip.get(ip, 0) + 1
        metrics.OPEN_SOCKETS.inc()
        if identity is not None:
            await self._authenticate(state, identity)
        else:
            state.timer = asyncio.get_running_loop().call_later(
                self.settings.auth_timeout, self._spawn, self._auth_timed_out(sid))
        return True

    def _write_directly(self, sid: str, handler) -> None:
        """A socket connected with the websocket transport is written without engineio's queue."""
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        socket = self.sio.eio.sockets.get(eio_sid)
        if getattr(handler, "ws_connection", None) is not None and socket is not None and socket.upgraded:
            if self.manager.write_directly(eio_sid, socket, handler):
                handler.direct_eio_sid = eio_sid  # its events and acks skip engineio's queue too

    async def _on_disconnect(self, sid, reason=None):
        state = self.states.pop(sid, None)
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            self.manager.forget_websocket(eio_sid)
        if state is None:
            return
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

    async def _authenticate(self, state: SocketState, identity) -> None:
        """First authentication of a socket: user room, presence, expiry timer."""
        state.identity = identity
        self.sockets_of_user.setdefault(identity.user_id, set()).add(state.sid)
        await self.sio.enter_room(state.sid, "user:" + identity.user_id)
        self._schedule_expiry(state)
        await self.presence.socket_online(identity.user_id)

    def _schedule_expiry(self, state: SocketState) -> None:
        if state.timer is not None:
            state.timer.cancel()
        state.expired = False
        delay = max(0.0, state.identity.expires_at - time.time())
        state.timer = asyncio.get_running_loop().call_later(delay, self._token_expired, state.sid)

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
            self.settings.socket_token_grace, self._spawn, self.disconnect(sid))

    async def _auth_timed_out(self, sid: str) -> None:
        state = self.states.get(sid)
        if state is None or state.identity is not None:
            return
        self.emit_to_sid(sid, "error", {"code": "AUTH_TIMEOUT", "event": None,
                                        "message": "no auth:hello within AUTH_TIMEOUT"})
        await self.disconnect(sid)

    async def auth_hello(self, state: SocketState, payload) -> dict:
        """``auth:hello {token}``: authenticate, or refresh the token of the same user."""
        token = check_auth_hello(payload)
        try:
            identity = self.gateway.tokens.verify_access(token)
        except AuthError as exc:
            raise EventError(exc.code, exc.message) from None
        if await self._revoked(identity):
            raise EventError("TOKEN_REVOKED", "token revoked")
        if state.identity is None:
            try:
                self._check_user_cap(identity.user_id)
            except socketio.exceptions.ConnectionRefusedError:
                state.closing = True
                raise EventError("TOO_MANY_CONNECTIONS", "too many connections for this user") from None
            if state.timer is not None:
                state.timer.cancel()
            await self._authenticate(state, identity)
        elif identity.user_id != state.identity.user_id:
            raise EventError("FORBIDDEN", "auth:hello may only refresh the token of the same user")
        else:
            state.identity = identity
            self._schedule_expiry(state)
        return {"userId": identity.user_id, "expiresAt": iso_time(identity.expires_at)}

    async def _revoked(self, identity) -> bool:
        revocations = getattr(self.gateway, "revocations", None)
        if revocations is None:
            return False
        return bool(await revocations.is_revoked(identity))

    # -- client events: per-socket queue --------------------------------------------

    def receive(self, sid: str, eio_sid: str, data: list, ack_id) -> None:
        state = self.states.get(sid)
        if state is None or state.closing:
            return
        if len(state.pending) >= MAX_PENDING_EVENTS:
            self._spawn(self._reply(state, _event_name(data), ack_id,
                                    _failure("RATE_LIMITED", "too many events in flight on this socket")))
            return
        payload = data[1] if isinstance(data, list) and len(data) > 1 else None
        state.pending.append((data, ack_id, self.events.start_early(state, _event_name(data), payload)))
        if state.worker is None:
            state.worker = asyncio.ensure_future(self._run_pending(state))

    async def _run_pending(self, state: SocketState) -> None:
        try:
            while state.pending and not state.closing:
                data, ack_id, early = state.pending.popleft()
                await self._handle(state, data, ack_id, early)
        finally:
            state.worker = None
            if state.closing:
                while state.pending:
                    self.events.abandon(state.pending.popleft()[2])

    async def _handle(self, state: SocketState, data: list, ack_id, early=None) -> None:
        event = _event_name(data)
        metrics.EVENTS_IN.labels(event if event in KNOWN_EVENTS else "unknown", "socket").inc()
        payload = data[1] if len(data) > 1 else None
        try:
            if event == "auth:hello":
                result = await self.auth_hello(state, payload)
            else:
                try:
                    await self._check_authenticated(state)
                except EventError:
                    self.events.abandon(early)
                    raise
                result = await self.events.dispatch(state, event, payload, early)
            reply = {"ok": True, "data": {} if result is None else result}
        except EventError as exc:
            reply = _failure(exc.code, exc.message)
            if exc.code == "TOKEN_REVOKED":
                state.closing = True
        except Exception:
            log.exception("socket event %s failed", event, extra={"event": event, "sid": state.sid})
            reply = _failure("INTERNAL", "internal error")
        await self._reply(state, event, ack_id, reply)
        if state.closing and state.sid in self.states:
            await self.disconnect(state.sid)

    async def _check_authenticated(self, state: SocketState) -> None:
        if state.identity is None:
            raise EventError("UNAUTHENTICATED", "send auth:hello {token} first")
        if state.expired:
            raise EventError("TOKEN_EXPIRED", "token expired; send auth:hello with a new token")
        if await self._revoked(state.identity):
            raise EventError("TOKEN_REVOKED", "token revoked")

    async def _reply(self, state: SocketState, event: str, ack_id, reply: dict) -> None:
        """The ack envelope, or an ``error`` event when the client asked for no ack."""
        if ack_id is not None:
            eio_sid = self.manager.eio_sid_from_sid(state.sid, "/")
            if eio_sid is not None and not self.manager.send_ack(eio_sid, ack_id, reply):
                await self.sio._send_packet(eio_sid, self.sio.packet_class(
                    sio_packet.ACK, namespace="/", id=ack_id, data=[reply]))
        elif not reply["ok"]:
            self.emit_to_sid(state.sid, "error", {**reply["error"], "event": event})

    async def check_rate(self, user_id: str, scope: str, limit) -> None:
        decision = await self.limits.allow(scope, user_id, limit)
        if not decision.allowed:
            if getattr(self.gateway, "limits", None) is None:
                metrics.RATE_LIMITED.labels(scope).inc()
            raise EventError("RATE_LIMITED", "too many events; slow down")

    # -- sending -------------------------------------------------------------------

    def emit_to_sid(self, sid: str, event: str, data) -> None:
        """To one local socket (its own room never leaves this node)."""
        self.manager.deliver_local(event, data, sid)

    async def broadcast(self, event: str, data, room, skip_sid=None) -> None:
        """To a room (or rooms) on every node."""
        await self.manager.emit(event, data, "/", room=room, skip_sid=skip_sid)

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
            by_time = before is not None and identity.issued_at is not None and identity.issued_at < before
            if (jti is not None or before is not None) and not (by_jti or by_time):
                continue
            self.emit_to_sid(sid, "error", {"code": "TOKEN_REVOKED", "message": "token revoked",
                                            "event": None})
            await self.disconnect(sid)
            closed += 1
        return closed

    async def disconnect(self, sid: str) -> None:
        """Socket.IO disconnect (the client does not reconnect by itself)."""
        state = self.states.get(sid)
        if state is not None:
            state.closing = True
        await self.sio.disconnect(sid, ignore_queue=True)

    async def _close_transport(self, sid: str) -> None:
        """Engine.IO close: the client sees a transport close and reconnects (elsewhere)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is None or eio_sid not in self.sio.eio.sockets:
            return
        try:
            await asyncio.wait_for(self.sio.eio.disconnect(eio_sid), timeout=2.0)
        except Exception:
            pass

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_task_failure)

    # -- receipts, presence and typing fan-out -------------------------------------------

    def _delivery_acked(self, sid: str, data, *ack_args) -> None:
        """A device acked ``message:new``: queue a delivered receipt for the sender."""
        state = self.states.get(sid)
        message = data.get("message") if isinstance(data, dict) else None
        if state is None or state.identity is None or not isinstance(message, dict):
            return
        sender = _sender_of(message)
        message_id = message.get("id")
        if sender is None or message_id is None or sender == state.identity.user_id:
            return
        self._receipts.append((str(message_id), message.get("chatId"), sender, state.identity.user_id))
        if self._receipt_flush is None:
            self._receipt_flush = asyncio.ensure_future(self._flush_receipts())

    async def _flush_receipts(self) -> None:
        try:
            while self._receipts:
                batch, self._receipts = self._receipts, []
                by_key = {f"{m}:{r}": (m, c, s, r) for m, c, s, r in batch}
                at = iso_time()
                for key in await self.receipt_marks.first(list(by_key)):
                    message_id, chat_id, sender, recipient = by_key[key]
                    self.manager.emit_now("receipt:delivered", {
                        "chatId": chat_id, "messageId": message_id, "userId": recipient,
                        "at": at}, "user:" + sender)
        except Exception:
            log.exception("delivered receipts failed")
        finally:
            self._receipt_flush = None

    async def _announce_presence(self, user_id: str, status: str, last_seen, chat_ids) -> None:
        if not chat_ids:
            return
        data = {"userId": user_id, "status": status}
        if last_seen:
            data["lastSeen"] = last_seen
        await self.broadcast("presence:update", data, ["chat:" + c for c in chat_ids])

    async def _broadcast_typing(self, chat_id: str, user_id: str, typing: bool, skip_sid) -> None:
        await self.broadcast("typing:update", {"chatId": chat_id, "userId": user_id, "typing": typing},
                             "chat:" + chat_id, skip_sid=skip_sid)


def make_socket_handler(realtime: Realtime):
    """The Tornado handler of ``/socket.io/``: engineio's, with the gateway's rules."""
    base = get_tornado_handler(realtime.sio.eio)
    gateway = realtime.gateway
    max_payload = realtime.settings.socket_max_payload
    max_body = max_payload + 1024  # a polling POST may carry a few packets' framing

    @tornado.web.stream_request_body
    class SocketIOHandler(LingeringClose, base):
        """Streams request bodies so that prepare() can bound a polling POST before it is read:
        an oversized one is refused without buffering it (the server allows up to the largest
        route's body size)."""

        route_name = "socket.io"  # access log and metrics label
        _chunks = None

        def get_compression_options(self):
            return None  # no permessage-deflate: ~4x the memory and CPU per socket

        @property
        def max_message_size(self) -> int:
            return max_payload + 1024

        def check_origin(self, origin: str) -> bool:
            return realtime.origin_allowed(origin)

        def set_default_headers(self) -> None:
            # What every public response carries (engineio adds its CORS headers itself).
            headers = self._headers
            del headers["Server"]
            for name, value in gateway.security_headers:
                headers[name] = value
            headers["Vary"] = "Origin"

        direct_eio_sid = None  # set once the socket is written directly (websocket from the start)

        def on_message(self, message):
            """Events and acks of a direct websocket go straight to the gateway, in
            arrival order (anything else, or while engineio still holds earlier
            messages, through engineio's queue as usual)."""
            eio_sid = self.direct_eio_sid
            if (eio_sid is not None and type(message) is str and message[:1] == "4"
                    and self.receive_queue.empty() and realtime.manager.receive_fast(eio_sid, message[1:])):
                return
            self.receive_queue.put_nowait(message)

        def prepare(self):
            origin = self.request.headers.get("Origin")
            if not realtime.origin_allowed(origin):
                self._refuse(403, "FORBIDDEN", "origin not allowed")
            elif gateway.draining and "sid" not in self.request.query_arguments:
                self._refuse(503, "DRAINING", "this node is shutting down")
            elif self.request.method == "POST":
                self._chunks = []
                self.request.connection.set_max_body_size(max_body)  # a chunked body too
                if _content_length(self.request) > max_body:
                    self._refuse(413, "PAYLOAD_TOO_LARGE", "packet too large")  # the body is not read

        def data_received(self, chunk: bytes) -> None:
            if self._chunks is not None:
                self._chunks.append(chunk)

        async def post(self, *args, **kwargs):
            self.request.body = b"".join(self._chunks or ())
            await super().post(*args, **kwargs)

        def _refuse(self, status: int, code: str, message: str) -> None:
            self.set_status(status)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            for name, value in gateway.cors.response_headers(self.request.headers.get("Origin")):
                self.set_header(name, value)
            self.finish(error_body(code, message, None))

    return SocketIOHandler


def _content_length(request) -> int:
    try:
        return int(request.headers.get("Content-Length", "0"))
    except ValueError:
        return 0  # tornado refuses it when reading the body


def _refuse(code: str, message: str):
    """Refuse a connection: the client gets ``connect_error`` with ``data.code``."""
    raise socketio.exceptions.ConnectionRefusedError(message, {"code": code, "message": message})


def _failure(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}}


def _event_name(data) -> str:
    if isinstance(data, list) and data and isinstance(data[0], str):
        return data[0][:64]
    return ""


def _rooms_of(to) -> list[str]:
    if not isinstance(to, dict):
        return []
    if isinstance(to.get("chat"), str):
        return ["chat:" + to["chat"]]
    if isinstance(to.get("user"), str):
        return ["user:" + to["user"]]
    if isinstance(to.get("users"), list):
        return ["user:" + u for u in to["users"] if isinstance(u, str)]
    return []


def _sender_of(message: dict) -> str | None:
    sender = message.get("senderId", message.get("sender"))
    if isinstance(sender, dict):
        sender = sender.get("id")
    if isinstance(sender, int) and not isinstance(sender, bool):
        sender = str(sender)
    return sender if isinstance(sender, str) and sender else None


def _log_task_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("socket task failed: %r", task.exception())

