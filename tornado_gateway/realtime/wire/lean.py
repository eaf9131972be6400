"""Lean websockets: an engineio socket driven by its Tornado handler (LeanSocket), the node's
Pinger, and the packet-error and task helpers shared by the server and the handler."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

log = logging.getLogger("tornado_gateway.realtime")
_PING = eio_packet.Packet(eio_packet.PING).encode().encode()

# -- lean websockets: no engineio tasks, queue or ping task per socket --------------------
#
# A socket that connects with the websocket transport from the start becomes a LeanSocket
# at its engineio connect: its packets are framed and written by the manager (send_text),
# its incoming messages arrive through the handler's on_message, and one Pinger per node
# sends the PINGs engineio would send from a sleeping task per socket (engineio's service
# task still closes a socket whose PONG does not come). Upgrades from polling keep engineio.

ENGINEIO_TYPES = frozenset("0123456")  # open, close, ping, pong, message, upgrade, noop


def protocol_error(eio_sid: str | None, layer: str, exc: BaseException) -> None:
    """The one warning line of a client's undecodable packet (bounded: it quotes client bytes)."""
    log.warning("malformed %s packet from a client, transport closed: %.120s", layer, exc,
                extra={"event": "protocol_error", "eio_sid": eio_sid})


def _spawn(coro: Any) -> None:
    asyncio.ensure_future(coro).add_done_callback(_log_failure)


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("socket task failed", exc_info=task.exception())


class LeanSocket(AsyncSocket):
    """An engineio socket whose websocket is driven by its handler, not by tasks of its own."""

    handler: Any = None  # the Tornado WebSocketHandler, once the websocket runs
    writer: Any = None  # the node's manager (``send_text``, ``flush_one``): ``configure``
    pinger: "Pinger | None" = None
    ping_slot: int | None = None  # the Pinger's slot of this socket

    async def _websocket_handler(self, ws: Any) -> None:
        if getattr(self, "connected"):  # an upgrade from polling: engineio's own loop
            await super()._websocket_handler(ws)
            return
        self.connected = self.upgraded = True
        handler = ws.tornado_handler
        self.handler = handler
        handler.lean_socket = self
        queue = self.__dict__.pop("queue")  # from here on the class's write-through stand-in
        while not queue.empty():  # the OPEN packet, queued before the websocket ran
            self._write(queue.get_nowait())
        if self.pinger is not None:
            self.pinger.add(self)
        # and return: no reader, writer or ping task for this socket

    @property
    def queue(self) -> Any:
        """engineio's per-socket queue until the websocket runs; then a stand-in that writes."""
        return self.__dict__.get("queue") or _WriteThrough(self)

    @queue.setter
    def queue(self, value: Any) -> None:
        self.__dict__["queue"] = value

    async def send(self, pkt: eio_packet.Packet) -> None:
        if self.handler is None:
            await super().send(pkt)
            return
        if self.closed or not await self.check_ping_timeout():
            return
        self._write(pkt)

    def _write(self, pkt: eio_packet.Packet) -> None:
        encoded = pkt.encode()
        if isinstance(encoded, str):
            self.writer.send_text(self.handler, encoded.encode())
        else:
            self.writer.send_text(self.handler, encoded, opcode=0x2)

    def ping(self) -> None:
        """Send a PING now (the Pinger's turn for this socket)."""
        self.last_ping = time.time()
        self.writer.send_text(self.handler, _PING)

    def schedule_ping(self) -> None:
        self.last_ping = cast(float, None)  # the PONG came; the Pinger sends the next PING in its turn

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        was_closed = self.closed
        await super().close(wait=False, abort=abort, reason=reason)
        handler = self.handler
        if not was_closed and handler is not None:
            self.writer.flush_one(handler)
            handler.close()
        if self.closed and handler is not None:
            # Let go of it now: engineio's service task drops a closed socket only when its
            # sweep passes (up to twice PING_TIMEOUT later), the Pinger on its next turn of
            # this socket's slot (up to PING_INTERVAL later); meanwhile a reconnect storm's
            # closed sockets, their handlers and requests stay on the heap.
            if self.server.sockets.get(self.sid) is self:
                del self.server.sockets[self.sid]
            if self.pinger is not None:
                self.pinger.discard(self)


class LeanReceiver:
    """What a websocket does with its incoming messages (the Tornado handler of /socket.io/
    and :class:`~tornado_gateway.realtime.wire.direct.DirectSocket`): events and acks of a
    directly written socket go straight to the gateway, in arrival order; other packets of a
    lean socket to engineio, one task while it runs and the later ones behind it."""

    direct_eio_sid: str | None = None  # set once the socket is written directly
    lean_socket: "LeanSocket | None" = None  # the LeanSocket this websocket drives
    _backlog: list | None = None  # a lean socket's messages behind one engineio is handling

    if TYPE_CHECKING:  # what the websocket class itself provides
        def close(self, code: int | None = None, reason: str | None = None) -> None: ...

    def take_message(self, message: Any) -> bool:
        """Handle ``message`` if it is not an Engine.IO packet (the transport is closed) or
        the socket is lean; False leaves it to the caller (a socket upgraded from polling)."""
        if type(message) is str and message[:1] not in ENGINEIO_TYPES:
            protocol_error(self.direct_eio_sid, "engine.io", ValueError(f"packet type {message[:1]!r}"))
            self.close(1002, "parse error")  # closing the transport ends the socket
            return True
        if self.lean_socket is None:
            return False
        if self._backlog is not None:
            self._backlog.append(message)
        elif not self.fast(message):
            self._backlog = []
            _spawn(self._lean_receive(message))
        return True

    def fast(self, message: Any) -> bool:
        """An EVENT or ACK of a directly written socket, handled now (True)."""
        eio_sid = self.direct_eio_sid
        return bool(eio_sid is not None and type(message) is str and message[:1] == "4"
                    and LeanSocket.writer.receive_fast(eio_sid, message[1:]))

    async def _lean_receive(self, message: Any) -> None:
        """Packets of a lean socket that engineio handles (connect, pong, close), in order."""
        socket = cast(LeanSocket, self.lean_socket)
        try:
            while True:
                if not self.fast(message):
                    await socket.receive(eio_packet.Packet(encoded_packet=message))
                if not self._backlog:
                    return
                message = self._backlog.pop(0)
        except Exception:
            log.exception("socket.io packet failed; closing the socket")
            await socket.close(wait=False, abort=True)
        finally:
            self._backlog = None

    def lean_closed(self) -> bool:
        """The websocket ended: its lean socket closes (False when it has none)."""
        socket = self.lean_socket
        if socket is None:
            return False
        if not socket.closed:
            _spawn(socket.close(wait=False, abort=True, reason=socket.server.reason.TRANSPORT_CLOSE))
        return True


class _WriteThrough:
    """What a running lean socket has instead of a queue: whatever is put is written now."""

    __slots__ = ("socket",)

    def __init__(self, socket: LeanSocket) -> None:
        self.socket = socket

    def put_nowait(self, pkt: Any) -> None:
        if pkt is not None and not self.socket.closed:
            self.socket._write(pkt)

    async def put(self, pkt: Any) -> None:
        self.put_nowait(pkt)

    async def join(self) -> None:
        return None

    def empty(self) -> bool:
        return True


class Pinger:
    """PINGs every lean socket once per ``interval`` seconds, a slice of them each second."""

    def __init__(self, interval: float) -> None:
        self.slots: list[set[LeanSocket]] = [set() for _ in range(max(1, int(interval)))]
        self._task: asyncio.Task | None = None
        self._last = 0

    def add(self, socket: LeanSocket) -> None:
        now = int(time.monotonic())
        socket.pinger = self  # the one to discard it from (a second node in one process has its own)
        socket.ping_slot = now % len(self.slots)
        self.slots[socket.ping_slot].add(socket)
        if self._task is None:
            self._last = now
            self._task = asyncio.ensure_future(self._run())

    def discard(self, socket: LeanSocket) -> None:
        """A closed socket leaves its slot now (``_turn`` would drop it on its next turn)."""
        if socket.ping_slot is not None:
            self.slots[socket.ping_slot].discard(socket)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1)
            now = int(time.monotonic())
            for second in range(self._last + 1, min(now, self._last + len(self.slots)) + 1):
                self._turn(self.slots[second % len(self.slots)])
            self._last = now

    @staticmethod
    def _turn(slot: set[LeanSocket]) -> None:
        for socket in list(slot):
            if socket.closed or socket.closing:
                slot.discard(socket)
            elif socket.last_ping is None:
                socket.ping()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def configure(writer: Any, pinger: Pinger) -> None:
    """The node's manager and pinger (one Socket.IO server per process)."""
    LeanSocket.writer = writer
    LeanSocket.pinger = pinger


def adopt(socket: Any) -> bool:
    """Make a fresh engineio socket a LeanSocket (before its websocket handler runs)."""
    if type(socket) is not AsyncSocket or socket.connected or LeanSocket.writer is None:
        return False
    socket.__class__ = LeanSocket
    return True
