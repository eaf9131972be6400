"""python-socketio's manager internals given names: the Redis manager's private hooks
(RedisManagerBase), the room primitives (RoomHooks) and the rooms of each sid (RoomIndex)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from bidict import ValueDuplicationError
from socketio.async_redis_manager import AsyncRedisManager

from tornado_gateway.realtime.wire.delivery import FastDelivery

CONTROL_METHODS = frozenset({"disconnect", "enter_room", "leave_room", "close_room"})


class RoomIndex:
    """The rooms each sid is in, kept through ``basic_enter_room``/``basic_leave_room`` (mixed in
    before the manager), so that a disconnect leaves its own few rooms: python-socketio's
    ``basic_disconnect`` scans every room of the namespace, O(sockets) per disconnect and
    quadratic when a node's sockets all go at once (a drain, a reconnect storm)."""

    pending_connect: dict
    pending_disconnect: dict

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rooms_of_sid: dict[str, list] = {}  # sid -> its rooms (None and its own included)
        # python-socketio keeps the sids connecting / disconnecting in lists, scanned by every
        # is_connected (each incoming event): O(n) with a storm's n connects in flight
        self.pending_connect = _PendingSids(self.pending_connect)
        self.pending_disconnect = _PendingSids(self.pending_disconnect)

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        # A new room is made here as a _Bimap, where python-socketio would make a bidict; its
        # own checks (namespace connected, not another sid's room) still run and raise first.
        rooms = self.rooms.get(namespace)
        if rooms is None:
            if eio_sid is not None:
                self.rooms[namespace] = {room: _Bimap()}
        elif room not in rooms and (sid == room or room not in rooms.get(None, ())):
            rooms[room] = _Bimap()
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        rooms = self.rooms_of_sid.get(sid)
        if rooms is None:
            self.rooms_of_sid[sid] = [room]
        elif room not in rooms:
            rooms.append(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        rooms = self.rooms_of_sid.get(sid)
        if rooms is not None and room in rooms:
            rooms.remove(room)
            if not rooms:
                del self.rooms_of_sid[sid]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's ``basic_disconnect`` without its scan of every room."""
        if namespace not in self.rooms:
            return
        for room in list(self.rooms_of_sid.get(sid, ())):
            self.basic_leave_room(sid, namespace, room)
        self.rooms_of_sid.pop(sid, None)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]


class _Bimap:
    """A room's members (sid -> eio sid, and back) as python-socketio uses a ``bidict`` for
    them (``_fwdm``, ``_invm``, item access, ``get``, ``in``, ``len``; a value already held by
    another key raises ``ValueDuplicationError``, a new value for a key replaces the old):
    two plain dicts, where a bidict costs several times the CPU and memory per write."""

    __slots__ = ("_fwdm", "_invm")

    def __init__(self) -> None:
        self._fwdm: dict = {}
        self._invm: dict = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        owner = self._invm.get(value, _ABSENT)
        if owner is not _ABSENT and owner != key:
            raise ValueDuplicationError(value)
        old = self._fwdm.get(key, _ABSENT)
        if old is not _ABSENT:
            del self._invm[old]
        self._fwdm[key] = value
        self._invm[value] = key

    def __getitem__(self, key: Any) -> Any:
        return self._fwdm[key]

    def __delitem__(self, key: Any) -> None:
        del self._invm[self._fwdm.pop(key)]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._fwdm.get(key, default)

    def __contains__(self, key: Any) -> bool:
        return key in self._fwdm

    def __len__(self) -> int:
        return len(self._fwdm)

    def __iter__(self) -> Any:
        return iter(self._fwdm)

    def items(self) -> Any:
        return self._fwdm.items()

    def keys(self) -> Any:
        return self._fwdm.keys()

    def values(self) -> Any:
        return self._fwdm.values()


_ABSENT = object()


class _Sids(dict):
    """The list python-socketio keeps per namespace (``append``, ``remove``, ``in``, ``len``),
    as an insertion-ordered dict: membership and removal in O(1)."""

    def append(self, sid: str) -> None:
        self[sid] = None

    def remove(self, sid: str) -> None:
        del self[sid]


class _PendingSids(dict):
    """``pending_connect`` / ``pending_disconnect``: namespace -> sids; a list stored becomes _Sids."""

    def __init__(self, initial: dict) -> None:
        super().__init__()
        for namespace, sids in initial.items():
            self[namespace] = sids

    def __setitem__(self, namespace: Any, sids: Any) -> None:
        super().__setitem__(namespace, sids if isinstance(sids, _Sids) else _Sids.fromkeys(sids))


class RedisManagerBase(RoomIndex, FastDelivery, AsyncRedisManager):
    """python-socketio's AsyncRedisManager with its private hooks given names: ``_thread``
    (the listener task) runs :meth:`listen`, ``_publish`` goes to :meth:`publish_control`."""

    async def _thread(self) -> None:
        await self.listen()

    async def _publish(self, data: Any) -> None:
        await self.publish_control(data)

    async def listen(self) -> None:
        raise NotImplementedError

    async def publish_control(self, data: dict) -> None:
        raise NotImplementedError

    async def handle_control(self, method: str, message: dict) -> None:
        """Another node's disconnect / enter_room / leave_room / close_room message."""
        if method == "disconnect":
            await self._handle_disconnect(message)
        elif method == "enter_room":
            await self._handle_enter_room(message)
        elif method == "leave_room":
            await self._handle_leave_room(message)
        elif method == "close_room":
            await self._handle_close_room(message)

    def listener_task(self) -> asyncio.Task | None:
        return getattr(self, "thread", None)


class RoomHooks:
    """python-socketio's room primitives given names (mixed in before the manager): every
    room of the manager appears in ``basic_enter_room`` and disappears in
    ``basic_leave_room`` (enter/leave, disconnect and close_room all go through them)."""

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        new = not self.rooms.get(namespace, {}).get(room)  # absent, or made empty by RoomIndex
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        if new and namespace == "/":
            self.room_appeared(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        if namespace == "/" and room not in self.rooms.get(namespace, {}):
            self.room_gone(room)

    def room_appeared(self, room: Any) -> None:
        """The first local socket entered ``room``."""

    def room_gone(self, room: Any) -> None:
        """The last local socket left ``room``."""
