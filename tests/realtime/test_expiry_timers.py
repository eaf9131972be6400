"""ExpiryTimers: one loop timer per expiry moment, shared by the sockets that expire then."""

from __future__ import annotations

import asyncio
import time

import pytest

from tornado_gateway.realtime.sessions import ExpiryTimers


@pytest.mark.gen_test
async def test_sockets_expiring_together_share_one_timer_and_each_fires_once():
    fired: list[str] = []
    timers = ExpiryTimers(fired.append)
    at = time.time() + 0.2
    expiries = {sid: timers.call_at(at, sid) for sid in ("a", "b", "c")}
    later = timers.call_at(at + 0.2, "d")
    assert len(timers._timers) == 2  # two moments, two loop timers for four sockets
    expiries["b"].cancel()
    while "d" not in fired:
        await asyncio.sleep(0.05)
    assert sorted(fired[:2]) == ["a", "c"] and fired[2:] == ["d"]  # b was cancelled; none twice
    later.cancel()  # after it fired: nothing left to cancel, no error
    assert timers._timers == {} and timers._due == {}


@pytest.mark.gen_test
async def test_cancelling_every_socket_of_a_moment_cancels_its_timer():
    fired: list[str] = []
    timers = ExpiryTimers(fired.append)
    at = time.time() + 0.1
    first, second = timers.call_at(at, "a"), timers.call_at(at, "b")
    first.cancel()
    assert len(timers._timers) == 1  # b still waits
    second.cancel()
    assert timers._timers == {} and timers._due == {}
    marker = timers.call_at(at + 0.1, "marker")  # a later one still fires: the loop kept running
    while not fired:
        await asyncio.sleep(0.05)
    assert fired == ["marker"] and marker.at == at + 0.1


@pytest.mark.gen_test
async def test_a_failing_expiry_does_not_stop_the_others():
    fired: list[str] = []

    def fire(sid: str) -> None:
        if sid == "bad":
            raise RuntimeError("boom")
        fired.append(sid)

    timers = ExpiryTimers(fire)
    at = time.time() + 0.05
    for sid in ("bad", "x", "y"):
        timers.call_at(at, sid)
    while len(fired) < 2:
        await asyncio.sleep(0.05)
    assert sorted(fired) == ["x", "y"]
