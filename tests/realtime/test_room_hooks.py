"""Pins the python-socketio behaviour wire.RoomHooks relies on.

The room manager (un)subscribes a room's channel when ``RoomHooks`` reports
that the room appeared or disappeared: ``basic_enter_room`` /
``basic_leave_room`` must stay the only ways a room of the manager appears or
disappears, through enter/leave, disconnect and close_room alike.
"""

from __future__ import annotations

from typing import Any

import pytest
import socketio
from socketio.async_manager import AsyncManager

from tornado_gateway.realtime.wire import RoomHooks


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
