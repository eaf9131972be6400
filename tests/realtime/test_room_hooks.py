"""Pins the python-socketio behaviour wire.RoomHooks relies on.

The room manager (un)subscribes a room's channel when ``RoomHooks`` reports
that the room appeared or disappeared: ``basic_enter_room`` /
``basic_leave_room`` must stay the only ways a room of the manager appears or
disappears, through enter/leave, disconnect and close_room alike.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import socketio
from hypothesis import given
from hypothesis import strategies as st
from socketio.async_manager import AsyncManager

from tornado_gateway.realtime.wire import RoomHooks, RoomIndex


class Recording(RoomHooks, AsyncManager):
    def __init__(self) -> None:
        super().__init__()
        self.appeared: list[Any] = []
        self.gone: list[Any] = []

    def room_appeared(self, room: Any) -> None:
        self.appeared.append(room)

    def room_gone(self, room: Any) -> None:
        self.gone.append(room)


@pytest.mark.gen_test
async def test_rooms_appear_and_disappear_only_through_the_basic_hooks() -> None:
    manager = Recording()
    socketio.AsyncServer(client_manager=manager)  # a manager belongs to a server
    one = await manager.connect("eio-1", "/")
    two = await manager.connect("eio-2", "/")
    await manager.enter_room(one, "/", "chat:a")
    await manager.enter_room(two, "/", "chat:a")
    await manager.enter_room(one, "/", "chat:b")
    await manager.enter_room(two, "/", "chat:c")
    assert [r for r in manager.appeared if isinstance(r, str) and r.startswith("chat:")] == [
        "chat:a", "chat:b", "chat:c"]
    await manager.leave_room(one, "/", "chat:a")
    assert "chat:a" not in manager.gone  # socket two is still in it
    await manager.disconnect(one, "/")  # leaves chat:b through basic_leave_room
    assert "chat:b" in manager.gone
    await manager.close_room("chat:c", "/")
    assert "chat:c" in manager.gone
    await manager.disconnect(two, "/")
    assert "chat:a" in manager.gone
    assert manager.rooms.get("/", {}).get("chat:a") is None



class Indexed(RoomIndex, RoomHooks, AsyncManager):
    def __init__(self) -> None:
        super().__init__()
        self.gone: list[Any] = []

    def room_gone(self, room: Any) -> None:
        self.gone.append(room)


def _shape(manager: AsyncManager) -> dict:
    """The manager's rooms with every sid written as its eio sid (sids are random)."""
    eio_of = {sid: eio for room in manager.rooms.get("/", {}).values() for sid, eio in room.items()}
    return {eio_of.get(name, name): sorted(room.values()) for name, room in manager.rooms.get("/", {}).items()}


@pytest.mark.gen_test
async def test_a_disconnect_leaves_exactly_the_rooms_of_its_sid() -> None:
    """RoomIndex's disconnect (no scan of every room) ends in the state python-socketio's has."""
    indexed, plain = Indexed(), AsyncManager()
    for manager in (indexed, plain):
        socketio.AsyncServer(client_manager=manager)
        sids = [await manager.connect(f"eio-{i}", "/") for i in range(3)]
        for i, sid in enumerate(sids):
            await manager.enter_room(sid, "/", "chat:all")
            await manager.enter_room(sid, "/", f"user:{i}")
        await manager.leave_room(sids[0], "/", "user:0")
        manager.pre_disconnect(sids[1], "/")
        manager.callbacks[sids[1]] = {0: 1}
        await manager.disconnect(sids[1], "/")
        await manager.disconnect(sids[0], "/")
        assert sids[1] not in manager.callbacks and not manager.pending_disconnect
    assert _shape(indexed) == _shape(plain) == {None: ["eio-2"], "eio-2": ["eio-2"],
                                                "chat:all": ["eio-2"], "user:2": ["eio-2"]}
    assert {"user:0", "user:1"} <= set(indexed.gone) and "chat:all" not in indexed.gone
    assert list(indexed.rooms_of_sid) == [next(iter(indexed.rooms["/"][None]))]


@pytest.mark.gen_test
async def test_pending_sids_answer_membership_without_a_scan_and_as_lists_did() -> None:
    """RoomIndex keeps python-socketio's pending connects/disconnects in O(1) containers."""
    manager = Indexed()
    socketio.AsyncServer(client_manager=manager)
    sids = [await manager.connect(f"eio-{i}", "/") for i in range(3)]  # connected at once
    assert all(manager.is_connected(sid, "/") for sid in sids) and not manager.pending_connect
    manager.pending_connect["/"] = []  # how python-socketio makes a namespace's list
    manager.pending_connect["/"].append("s-pending")
    assert type(manager.pending_connect["/"]).__name__ == "_Sids"
    assert not manager.is_connected("s-pending", "/") and "s-pending" in manager.pending_connect["/"]
    manager.pre_disconnect(sids[0], "/")
    assert not manager.is_connected(sids[0], "/") and manager.is_connected(sids[1], "/")
    await manager.disconnect(sids[0], "/")
    assert "/" not in manager.pending_disconnect and manager.is_connected(sids[2], "/")



def test_rooms_are_made_where_python_socketio_would_make_a_bidict() -> None:
    # RoomIndex makes a missing room as a _Bimap before python-socketio's basic_enter_room
    # runs, which then only writes to it; the rest of python-socketio reads rooms through
    # _fwdm, _invm, get, in and len.
    from socketio.base_manager import BaseManager

    source = inspect.getsource(BaseManager.basic_enter_room)
    assert "if room not in self.rooms[namespace]:" in source and "bidict()" in source
    assert "._invm[eio_sid]" in inspect.getsource(BaseManager.sid_from_eio_sid)
    assert "._fwdm.copy()" in inspect.getsource(BaseManager.get_participants)
    assert "except ValueDuplicationError" in inspect.getsource(BaseManager.pre_connect)


@pytest.mark.gen_test
async def test_room_members_behave_as_with_bidict() -> None:
    from tornado_gateway.realtime.wire.managers import _Bimap

    manager = Indexed()
    socketio.AsyncServer(client_manager=manager)
    sid = await manager.connect("eio-1", "/")
    assert type(manager.rooms["/"][None]) is _Bimap and type(manager.rooms["/"][sid]) is _Bimap
    assert manager.sid_from_eio_sid("eio-1", "/") == sid and manager.eio_sid_from_sid(sid, "/") == "eio-1"
    assert await manager.pre_connect("eio-1", "/") is None  # a second connect of one eio socket: refused
    await manager.enter_room(sid, "/", "chat:x")
    assert list(manager.get_participants("/", "chat:x")) == [(sid, "eio-1")]
    other = await manager.connect("eio-2", "/")
    with pytest.raises(ValueError):
        manager.basic_enter_room(sid, "/", other)  # another socket's own room: refused, unchanged
    assert list(manager.rooms["/"][other].items()) == [(other, "eio-2")]
    await manager.disconnect(sid, "/")
    assert manager.sid_from_eio_sid("eio-1", "/") is None


@given(st.lists(st.tuples(st.sampled_from(["set", "del"]), st.integers(0, 4), st.integers(0, 4)), max_size=40))
def test_bimap_matches_bidict(operations: list) -> None:
    from bidict import ValueDuplicationError, bidict

    from tornado_gateway.realtime.wire.managers import _Bimap

    ours, theirs = _Bimap(), bidict()
    for op, key, value in operations:
        outcomes = []
        for mapping in (ours, theirs):
            try:
                if op == "set":
                    mapping[key] = value
                else:
                    del mapping[key]
                outcomes.append("ok")
            except KeyError:
                outcomes.append("KeyError")
            except ValueDuplicationError:  # bidict's KeyAndValueDuplicationError is one too
                outcomes.append("ValueDuplicationError")
        assert outcomes[0] == outcomes[1], (op, key, value)
        assert dict(ours.items()) == dict(theirs.items()) and ours._invm == dict(theirs.inverse.items())
